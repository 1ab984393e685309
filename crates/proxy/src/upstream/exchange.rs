//! One request on one upstream connection, up to its response head, in the request's own
//! task: the head and the body go out while the response is read, so an answer that comes
//! before the body is done (R4, `Expect: 100-continue`) is seen at once.
//!
//! The request head arrives serialized ([`write_request_head`]); the response head is
//! parsed with `httparse` and framed by `linger_h1::response_framing` (RFC 9112 §6.3).

use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use http_body::Body;
use linger_h1::{response_framing, ResponseFraming};
use tokio::time::{Instant, Sleep};

use super::conn::{poll_fill, UpstreamConn, HEAD_READ};
use crate::body::{ExpectGate, UpBody};
use crate::error::TryErrorKind;
use crate::io::outbox;
use crate::io::PeerClose;
use crate::lifecycle::upstream::ConnFields;

/// How long an `Expect: 100-continue` body waits for the upstream's 100 before it is sent
/// anyway (curl waits 1 s).
pub const EXPECT_WAIT: Duration = Duration::from_secs(1);
/// The largest response head linger reads.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// The most header fields a response head may have.
const MAX_RESPONSE_HEADERS: usize = 128;
const _: () = assert!(MAX_RESPONSE_HEADERS <= 128, "one bit per field in a u128");

/// A reason phrase other than the status code's own, forwarded as the upstream sent it.
#[derive(Debug, Clone)]
pub struct ReasonPhrase(pub Bytes);

/// A parsed response head and how its body is framed. Its hop-by-hop fields (the fixed
/// ones and those its `Connection` names) are read into `conn` and `upgrade` and left out
/// of `parts.headers`: they never reach the client.
#[derive(Debug)]
pub struct ResponseHead {
    pub parts: http::response::Parts,
    pub framing: ResponseFraming,
    /// What its `Connection` and `Keep-Alive` fields said.
    pub conn: ConnFields,
    /// Its `Upgrade` field (the first), for a `101`.
    pub upgrade: Option<HeaderValue>,
}

/// The request as it goes out.
#[derive(Debug)]
pub struct Outgoing<'a> {
    /// The serialized head, with any buffered body after it.
    pub head: Vec<u8>,
    /// A body that streams from the downstream, if any.
    pub body: Option<&'a mut UpBody>,
    /// Send the streamed body with chunked encoding (its length is unknown).
    pub chunked: bool,
    /// Opened by a `100 Continue` or after [`EXPECT_WAIT`].
    pub gate: Option<&'a ExpectGate>,
    /// How long to go on sending the body after a response head arrived before it ended.
    pub early_wait: Duration,
    /// Hold an early response until the client's body has ended, even when the upstream
    /// reads no more of it (the listener's `early_response = "hold"`).
    pub hold: bool,
    pub method: &'a Method,
    /// Send a head without a body to stream with the worker's other writes of the turn
    /// (`io::outbox`). Not for a request whose client connection ends with it: nothing of
    /// that client follows to share the run, and its round trip paces it.
    pub in_run: bool,
}

/// What came back.
#[derive(Debug)]
pub struct Answered {
    pub head: ResponseHead,
    /// The whole request body went out before the response head was handed on.
    pub body_complete: bool,
    /// What is left to send of a body still streaming: it goes on while the response
    /// body is read (an origin may answer as it reads, as an echo does).
    pub tail: Option<Tail>,
}

/// The rest of a request body that was still streaming when the response head came.
#[derive(Debug)]
pub struct Tail {
    /// Encoded bytes not written yet.
    pub pending: Bytes,
    pub chunked: bool,
    /// The body's last frame was taken (`pending` holds the end).
    pub stream_ended: bool,
}

/// Sends `req` on `conn` and reads up to the final response head.
pub async fn exchange(
    conn: &mut UpstreamConn,
    req: Outgoing<'_>,
) -> Result<Answered, TryErrorKind> {
    let mut flight = InFlight::new(req);
    std::future::poll_fn(|cx| flight.poll(cx, conn)).await
}

/// An exchange under way, polled in place by the request's task: its state is plain
/// fields, so the request's future holds it once rather than a nest of futures.
struct InFlight<'a> {
    /// The request head (and a buffered body), until it is queued or written.
    head: HeadOut,
    /// The queued head's place in the worker's run of writes (`io::outbox`).
    ticket: Option<outbox::Ticket>,
    body: Option<&'a mut UpBody>,
    chunked: bool,
    gate: Option<&'a ExpectGate>,
    early_wait: Duration,
    hold: bool,
    method: &'a Method,
    /// Encoded bytes of the body (or the queued head's rest) not written yet.
    pending: Bytes,
    /// A write failed: nothing more goes out, but the answer may already be in.
    write_dead: bool,
    /// The body's last frame was taken.
    stream_ended: bool,
    /// The body waits for a `100 Continue` until `gate_deadline`.
    gate_waiting: bool,
    gate_deadline: Option<Instant>,
    final_head: Option<ResponseHead>,
    /// How long a final head that came before the body's end waits for it.
    early_deadline: Option<Instant>,
    /// The upstream answered early and will close: the body's rest is read and dropped.
    discarding: bool,
    /// One timer for both deadlines, made only when one is set: the common exchange (no
    /// `Expect`, no early response) builds none.
    timer: Option<Pin<Box<Sleep>>>,
}

/// How the request head goes out.
enum HeadOut {
    /// With the worker's other writes of the turn, once the exchange is first polled.
    Queue(Vec<u8>),
    /// Written here, whole, before anything else (what is left of it).
    Write(Bytes),
    Sent,
}

/// What a look at the exchange's sockets, body and timer did.
enum Step {
    /// Something moved: look again.
    Moved,
    /// Nothing can move until a waker fires.
    Wait,
}

impl<'a> InFlight<'a> {
    fn new(req: Outgoing<'a>) -> Self {
        // With nothing to stream after it, the head goes with the worker's other requests
        // of this turn, and the exchange goes on to wait for the answer meanwhile.
        let head = if req.in_run && req.body.is_none() && req.gate.is_none() {
            HeadOut::Queue(req.head)
        } else {
            HeadOut::Write(Bytes::from(req.head))
        };
        let gate_waiting = req.gate.is_some_and(|g| !g.is_open());
        Self {
            head,
            ticket: None,
            stream_ended: req.body.is_none(),
            body: req.body,
            chunked: req.chunked,
            gate: req.gate,
            early_wait: req.early_wait,
            hold: req.hold,
            method: req.method,
            pending: Bytes::new(),
            write_dead: false,
            gate_waiting,
            gate_deadline: gate_waiting.then(|| crate::io::clock::now() + EXPECT_WAIT),
            final_head: None,
            early_deadline: None,
            discarding: false,
            timer: None,
        }
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut UpstreamConn,
    ) -> Poll<Result<Answered, TryErrorKind>> {
        ready!(self.poll_head(cx, conn));
        loop {
            self.take_ticket();
            self.read_heads(&mut conn.buf)?;
            if let Some(answered) = self.answered() {
                return Poll::Ready(Ok(answered));
            }
            match self.poll_step(cx, conn)? {
                Step::Moved => continue,
                Step::Wait => return Poll::Pending,
            }
        }
    }

    /// Sends the head: queued with the turn's writes, or written whole here. A reset
    /// here may still have left an answer in the receive buffer (R4), so a failed write
    /// is noted and the answer read before anything is concluded.
    fn poll_head(&mut self, cx: &mut Context<'_>, conn: &UpstreamConn) -> Poll<()> {
        loop {
            match &mut self.head {
                HeadOut::Sent => return Poll::Ready(()),
                HeadOut::Queue(head) => {
                    let (stream, stats) = conn.shared();
                    let dest = outbox::Dest::Upstream(stream.clone(), stats.clone());
                    match outbox::queue(dest, std::mem::take(head), cx.waker(), false) {
                        Ok(t) => {
                            self.ticket = Some(t);
                            self.head = HeadOut::Sent;
                        }
                        Err(head) => self.head = HeadOut::Write(Bytes::from(head)),
                    }
                }
                HeadOut::Write(rest) if rest.is_empty() => self.head = HeadOut::Sent,
                HeadOut::Write(rest) => match ready!(conn.poll_write_some(cx, rest)) {
                    Ok(n) if n > 0 => rest.advance(n),
                    _ => {
                        self.write_dead = true;
                        self.head = HeadOut::Sent;
                    }
                },
            }
        }
    }

    /// A queued head that did not go whole comes back: the rest is written here (as a
    /// body's bytes are), or the failure is the write's.
    fn take_ticket(&mut self) {
        let Some(t) = &mut self.ticket else { return };
        match t.sent() {
            // (Unreported: a head that went whole does not come back.)
            outbox::Sent::Fine | outbox::Sent::Written(_) => {}
            outbox::Sent::Rest(rest) => {
                self.pending = Bytes::from(rest);
                self.ticket = None;
            }
            outbox::Sent::Failed => {
                self.write_dead = true;
                self.ticket = None;
            }
        }
    }

    /// Parses what was read, up to the final head: a `100` opens the body's gate, other
    /// interim heads are dropped.
    fn read_heads(&mut self, buf: &mut BytesMut) -> Result<(), TryErrorKind> {
        while self.final_head.is_none() && !buf.is_empty() {
            let Some(h) = parse_response_head(buf, self.method)? else {
                break;
            };
            match h.parts.status.as_u16() {
                100 => {
                    if let Some(g) = self.gate {
                        g.open();
                    }
                }
                102..=199 => {}
                _ => self.final_head = Some(h),
            }
        }
        Ok(())
    }

    /// The answer, once the final head is in and the body ended, failed, or waited long
    /// enough after it (R4).
    fn answered(&mut self) -> Option<Answered> {
        let h = self.final_head.take()?;
        let body_done = self.body_done();
        if !body_done && !self.discarding && announces_close(&h) {
            // The upstream answered before the body ended and will close: it reads no
            // more of it (R4). The response goes at once, or, held, once the client's
            // rest was read and dropped.
            self.discarding = true;
            self.pending = Bytes::new();
        }
        let now = crate::io::clock::now();
        let deadline = *self.early_deadline.get_or_insert(now + self.early_wait);
        let now_is_late = now >= deadline || (self.discarding && !self.hold);
        if !(body_done || self.write_dead || now_is_late) {
            self.final_head = Some(h);
            return None;
        }
        let body_complete = body_done && !self.discarding;
        let tail = (!body_complete && !self.write_dead && !self.discarding).then(|| Tail {
            pending: std::mem::take(&mut self.pending),
            chunked: self.chunked,
            stream_ended: self.stream_ended,
        });
        Some(Answered {
            head: h,
            body_complete,
            tail,
        })
    }

    fn body_done(&self) -> bool {
        self.stream_ended && self.pending.is_empty()
    }

    /// One look, in order, at what can move: the response (until its final head), the
    /// body's bytes, the body's next frame, the deadlines.
    fn poll_step(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut UpstreamConn,
    ) -> Result<Step, TryErrorKind> {
        if self.final_head.is_none() {
            let (stream, buf, stats) = conn.split();
            match poll_fill(stream, buf, stats, HEAD_READ, cx) {
                Poll::Ready(Ok(0)) => {
                    return Err(TryErrorKind::PeerGone(peer_or(
                        stats.peer(),
                        PeerClose::Fin,
                    )))
                }
                Poll::Ready(Ok(_)) => return Ok(Step::Moved),
                Poll::Ready(Err(_)) => {
                    return Err(TryErrorKind::PeerGone(peer_or(
                        stats.peer(),
                        PeerClose::Error,
                    )))
                }
                Poll::Pending => {}
            }
        }
        let sending = !self.write_dead && !self.body_done();
        if sending && !self.discarding && !self.pending.is_empty() {
            if let Poll::Ready(w) = conn.poll_write_some(cx, &self.pending) {
                match w {
                    Ok(n) => self.pending.advance(n),
                    Err(_) => {
                        self.write_dead = true;
                        self.pending = Bytes::new();
                    }
                }
                return Ok(Step::Moved);
            }
        }
        if sending && self.pending.is_empty() && !self.stream_ended {
            if let Poll::Ready(f) = poll_next_frame(&mut self.body, cx) {
                self.take_frame(f)?;
                return Ok(Step::Moved);
            }
        }
        Ok(self.poll_timer(cx))
    }

    /// A frame of the request body: encoded to go out, or dropped while discarding.
    fn take_frame(&mut self, f: Frame) -> Result<(), TryErrorKind> {
        match f {
            Frame::Data(_) if self.discarding => {}
            Frame::Data(d) => self.pending = encode_data(d, self.chunked),
            Frame::Trailers(_) | Frame::End if self.discarding => self.stream_ended = true,
            Frame::Trailers(t) => {
                self.pending = encode_end(Some(&t), self.chunked);
                self.stream_ended = true;
            }
            Frame::End => {
                self.pending = encode_end(None, self.chunked);
                self.stream_ended = true;
            }
            Frame::Failed => return Err(TryErrorKind::RequestBody),
        }
        Ok(())
    }

    /// Waits for the earlier of the deadlines set. When the gate's passes, the body goes
    /// without a `100`; the early one is looked at again by [`InFlight::answered`].
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Step {
        let wake_at = self
            .gate_deadline
            .filter(|_| self.gate_waiting)
            .into_iter()
            .chain(self.early_deadline)
            .min();
        let Some(at) = wake_at else {
            debug_assert!(
                self.final_head.is_none(),
                "an exchange waits on its response, or on a deadline"
            );
            return Step::Wait;
        };
        let timer = match &mut self.timer {
            Some(t) => {
                if t.deadline() != at {
                    t.as_mut().reset(at);
                }
                t
            }
            None => self.timer.insert(Box::pin(tokio::time::sleep_until(at))),
        };
        if timer.as_mut().poll(cx).is_pending() {
            return Step::Wait;
        }
        if self.gate_waiting
            && self
                .gate_deadline
                .is_some_and(|d| crate::io::clock::now() >= d)
        {
            self.gate_waiting = false;
            if let Some(g) = self.gate {
                g.open();
            }
        }
        Step::Moved
    }
}

/// Does the response say the upstream closes after it?
fn announces_close(h: &ResponseHead) -> bool {
    h.conn.close
        || (h.parts.version == Version::HTTP_10 && !h.conn.keep_alive)
        || h.framing.framing == linger_h1::Framing::UntilClose
}

fn peer_or(seen: PeerClose, otherwise: PeerClose) -> PeerClose {
    if seen == PeerClose::Open {
        otherwise
    } else {
        seen
    }
}

enum Frame {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
    Failed,
}

fn poll_next_frame(body: &mut Option<&mut UpBody>, cx: &mut Context<'_>) -> Poll<Frame> {
    let Some(body) = body.as_mut() else {
        return Poll::Ready(Frame::End);
    };
    Poll::Ready(match ready!(Pin::new(&mut **body).poll_frame(cx)) {
        None => Frame::End,
        Some(Err(_)) => Frame::Failed,
        Some(Ok(f)) => match f.into_data() {
            Ok(d) => Frame::Data(d),
            Err(f) => match f.into_trailers() {
                Ok(t) => Frame::Trailers(t),
                Err(_) => Frame::End,
            },
        },
    })
}

pub fn encode_data(d: Bytes, chunked: bool) -> Bytes {
    if !chunked || d.is_empty() {
        return d;
    }
    let mut out = BytesMut::with_capacity(d.len() + 20);
    out.put_slice(format!("{:x}\r\n", d.len()).as_bytes());
    out.put_slice(&d);
    out.put_slice(b"\r\n");
    out.freeze()
}

pub fn encode_end(trailers: Option<&HeaderMap>, chunked: bool) -> Bytes {
    if !chunked {
        return Bytes::new();
    }
    let mut out = Vec::new();
    write_last_chunk(&mut out, trailers);
    Bytes::from(out)
}

/// A chunked body's end, appended to `out`: the last chunk, the trailers if any, and the
/// blank line (upstream, and to the client).
pub fn write_last_chunk(out: &mut Vec<u8>, trailers: Option<&HeaderMap>) {
    out.extend_from_slice(b"0\r\n");
    if let Some(t) = trailers {
        write_fields(out, t, false);
    }
    out.extend_from_slice(b"\r\n");
}

/// Header fields as they go upstream, `name: value` lines: a request's, serialized once
/// for all its tries (`Host` left out when each try sets its own: `skip_host`), or a
/// chunked body's trailers.
pub fn write_fields(out: &mut Vec<u8>, headers: &HeaderMap, skip_host: bool) {
    for (name, value) in headers {
        if skip_host && name == http::header::HOST {
            continue;
        }
        crate::forward::write_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
}

/// Serializes a request head for the upstream: `METHOD target HTTP/1.1`, `Host` (when
/// given, in place of the field's own, which `fields` must then leave out), the fields as
/// [`write_fields`] wrote them, linger's own, and chunked framing when asked (a body of
/// known length keeps its `Content-Length` among the fields).
pub fn write_request_head(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    fields: &[u8],
    added: &crate::forward::Added,
    host: Option<&str>,
    chunked: bool,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(h) = host {
        crate::forward::write_field(out, b"host", h.as_bytes());
    }
    out.extend_from_slice(fields);
    added.write(out);
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A response head's hop-by-hop fields, read in one pass over the names (by length
/// first: most are ruled out without a comparison) and left out of the map.
struct HopFields<'h> {
    /// What its `Connection` and `Keep-Alive` fields said.
    conn: ConnFields,
    /// The fields its `Connection` names.
    named: Vec<&'h [u8]>,
    /// Its first `Upgrade` field's value.
    upgrade: Option<&'h [u8]>,
    /// Which fields are hop-by-hop, one bit each (the table holds at most 128).
    bits: u128,
}

impl<'h> HopFields<'h> {
    fn read(headers: &[httparse::Header<'h>]) -> Self {
        let mut hop = Self {
            conn: ConnFields::default(),
            named: Vec::new(),
            upgrade: None,
            bits: 0,
        };
        for (i, h) in headers.iter().enumerate() {
            let n = h.name.as_bytes();
            if !crate::forward::is_hop_by_hop(n) {
                continue;
            }
            hop.bits |= 1 << i;
            if n.eq_ignore_ascii_case(b"connection") {
                hop.conn.add_connection(h.value, |t| hop.named.push(t));
            } else if n.eq_ignore_ascii_case(b"keep-alive") {
                hop.conn.hint.add(h.value);
            } else if n.eq_ignore_ascii_case(b"upgrade") && hop.upgrade.is_none() {
                hop.upgrade = Some(h.value);
            }
        }
        hop
    }

    /// Is the `i`th field, `name`, one that stays out of the map?
    fn leaves_out(&self, i: usize, name: &[u8]) -> bool {
        self.bits & (1 << i) != 0 || self.named.iter().any(|t| t.eq_ignore_ascii_case(name))
    }
}

/// The map of the fields kept, each name and value a slice of `head` by the offsets in
/// `at` (an empty name: left out), with room for the fields linger may put in on the
/// way to the client (Date, Connection, framing, a merged Via): no rehash.
fn fields_map(
    head: &Bytes,
    at: &[(u32, u32, u32, u32)],
    kept: usize,
) -> Result<HeaderMap, TryErrorKind> {
    let mut headers = HeaderMap::with_capacity(kept + 4);
    for &(ns, ne, vs, ve) in at.iter().filter(|a| a.1 > a.0) {
        let name = HeaderName::from_bytes(&head[ns as usize..ne as usize])
            .map_err(|_| TryErrorKind::Protocol("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs as usize..ve as usize))
            .map_err(|_| TryErrorKind::Protocol("invalid header value"))?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// Parses a response head from the front of `buf`, taking it out when complete. The
/// values are slices of the head's bytes, not copies; the field table is not zeroed.
pub fn parse_response_head(
    buf: &mut BytesMut,
    method: &Method,
) -> Result<Option<ResponseHead>, TryErrorKind> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_RESPONSE_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut res, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_RESPONSE_HEAD => {
            return Err(TryErrorKind::Protocol("response head too large"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(TryErrorKind::Protocol(httparse_error(e))),
    };
    let status = StatusCode::from_u16(res.code.unwrap_or(0))
        .map_err(|_| TryErrorKind::Protocol("invalid status code"))?;
    let framing = response_framing(method.as_str(), status.as_u16(), res.headers)
        .map_err(|_| TryErrorKind::Protocol("invalid Content-Length in a response"))?;
    let version = if res.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let reason = res
        .reason
        .filter(|r| Some(*r) != status.canonical_reason() && !r.is_empty())
        .map(|r| Bytes::copy_from_slice(r.as_bytes()));
    let hop = HopFields::read(res.headers);
    // Where each field sits in the head: the head is then taken out of `buf` as one
    // shared block (no copy), and each value becomes a slice of it. Fields left out keep
    // an empty name.
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
    let mut at = [(0u32, 0u32, 0u32, 0u32); MAX_RESPONSE_HEADERS];
    let count = res.headers.len();
    let mut kept = 0;
    for (i, (h, slot)) in res.headers.iter().zip(at.iter_mut()).enumerate() {
        if hop.leaves_out(i, h.name.as_bytes()) {
            continue;
        }
        let (n, v) = (offset(h.name.as_bytes()), offset(h.value));
        *slot = (n, n + h.name.len() as u32, v, v + h.value.len() as u32);
        kept += 1;
    }
    let HopFields { conn, upgrade, .. } = hop;
    let upgrade = upgrade.map(|u| (offset(u) as usize, offset(u) as usize + u.len()));
    let head = buf.split_to(len).freeze();
    let upgrade = match upgrade {
        Some((s, e)) => Some(
            HeaderValue::from_maybe_shared(head.slice(s..e))
                .map_err(|_| TryErrorKind::Protocol("invalid header value"))?,
        ),
        None => None,
    };
    let headers = fields_map(&head, &at[..count], kept)?;
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = status;
    parts.version = version;
    parts.headers = headers;
    if let Some(r) = reason {
        parts.extensions.insert(ReasonPhrase(r));
    }
    Ok(Some(ResponseHead {
        parts,
        framing,
        conn,
        upgrade,
    }))
}

fn httparse_error(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status line",
        httparse::Error::Token => "invalid token",
        httparse::Error::TooManyHeaders => "too many header fields",
        httparse::Error::Version => "invalid HTTP version",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::outbox::tests::{pair, poll_once, read_exactly, start_sender};
    use std::sync::Arc;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    /// An upstream connection on loopback, and the origin's end of it.
    async fn upstream() -> (UpstreamConn, TcpStream) {
        let (ours, origin) = pair().await;
        let ours = Arc::into_inner(ours).expect("the only handle");
        let stats = Arc::new(crate::io::IoStats::default());
        let registry = Arc::new(crate::observe::Registry::new(0));
        let entry = registry.open(crate::observe::ConnEntry::new(
            1,
            crate::observe::Side::Upstream,
            Arc::new("test".into()),
            origin.local_addr().unwrap(),
            None,
            stats.clone(),
        ));
        let ctx = Arc::new(super::super::conn::ConnCtx {
            metrics: Arc::new(crate::observe::Metrics::new()),
            registry,
            connects: Default::default(),
            open: Default::default(),
        });
        (UpstreamConn::new(1, ours, stats, entry, 0, ctx), origin)
    }

    /// Whether bytes wait to be read on `s`, without reading them or waiting.
    fn has_bytes(s: &TcpStream) -> bool {
        let mut b = [MaybeUninit::uninit(); 1];
        match socket2::SockRef::from(s).peek(&mut b) {
            Ok(n) => n > 0,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
            Err(e) => panic!("peek: {e}"),
        }
    }

    /// A head without a body goes with the turn's run; one whose client connection ends
    /// with it (`in_run` false, a request that asked to close) is written in the
    /// exchange's first poll, while a sender is there to take it.
    #[tokio::test]
    async fn a_head_goes_with_the_run_unless_its_client_ends_with_it() {
        let _sender = start_sender().await;
        let head = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";
        let answer = b"HTTP/1.1 204 No Content\r\n\r\n";
        for in_run in [false, true] {
            let (mut conn, mut origin) = upstream().await;
            let out = Outgoing {
                head: head.to_vec(),
                body: None,
                chunked: false,
                gate: None,
                early_wait: Duration::ZERO,
                hold: false,
                method: &Method::GET,
                in_run,
            };
            let mut ex = Box::pin(exchange(&mut conn, out));
            assert!(
                poll_once(&mut ex).await.is_pending(),
                "waits for the answer"
            );
            // Loopback puts what was sent in the origin's receive queue within the send.
            assert_eq!(
                has_bytes(&origin),
                !in_run,
                "in_run {in_run}: written in the first poll"
            );
            // Queued or not, it arrives: the sender runs while this task waits.
            assert_eq!(read_exactly(&mut origin, head.len()).await, head);
            origin.write_all(answer).await.unwrap();
            let answered = tokio::time::timeout(Duration::from_secs(10), ex)
                .await
                .expect("answered in time")
                .unwrap();
            assert_eq!(answered.head.parts.status, StatusCode::NO_CONTENT);
        }
    }

    #[test]
    fn hop_by_hop_fields_are_read_and_left_out_of_the_map() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade, X-Private\r\n\
               Keep-Alive: timeout=5, max=9\r\nUpgrade: websocket\r\nx-private: 1\r\n\
               TE: trailers\r\nX-Kept: yes\r\nProxy-Connection: close\r\n\r\n"[..],
        );
        let h = parse_response_head(&mut buf, &Method::GET)
            .unwrap()
            .unwrap();
        assert!(h.conn.upgrade && !h.conn.close && !h.conn.keep_alive);
        assert_eq!(
            h.conn.hint,
            crate::lifecycle::upstream::KeepAliveHint {
                timeout: Some(Duration::from_secs(5)),
                max: Some(9)
            }
        );
        assert_eq!(h.upgrade.unwrap(), "websocket");
        let names: Vec<&str> = h.parts.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
        let mut closing = BytesMut::from(&b"HTTP/1.0 200 OK\r\nconnection: close\r\n\r\n"[..]);
        let h = parse_response_head(&mut closing, &Method::GET)
            .unwrap()
            .unwrap();
        assert!(h.conn.close && announces_close(&h));
        assert!(h.parts.headers.is_empty());
    }

    #[test]
    fn response_heads_parse_and_frame() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-a: 1\r\n\r\nhiHTTP/1.1"[..],
        );
        let h = parse_response_head(&mut buf, &Method::GET)
            .unwrap()
            .unwrap();
        assert_eq!(h.parts.status, 200);
        assert_eq!(h.framing.framing, linger_h1::Framing::Length(2));
        assert_eq!(h.parts.headers["x-a"], "1");
        assert_eq!(&buf[..], b"hiHTTP/1.1");
        let mut partial = BytesMut::from(&b"HTTP/1.1 200 OK\r\nx-a"[..]);
        assert!(parse_response_head(&mut partial, &Method::GET)
            .unwrap()
            .is_none());
        let mut bad = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n"[..]);
        assert!(matches!(
            parse_response_head(&mut bad, &Method::GET),
            Err(TryErrorKind::Protocol(_))
        ));
    }

    #[test]
    fn request_heads_carry_their_framing() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("a"));
        let mut out = Vec::new();
        let none = crate::forward::Added::default();
        let mut all = Vec::new();
        write_fields(&mut all, &h, false);
        let mut no_host = Vec::new();
        write_fields(&mut no_host, &h, true);
        assert!(no_host.is_empty());
        write_request_head(&mut out, &Method::POST, "/x?y", &all, &none, None, true);
        assert_eq!(
            out,
            b"POST /x?y HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        out.clear();
        let added = crate::forward::Added {
            forwarded_for: Some([10, 0, 0, 9].into()),
            ..Default::default()
        };
        write_request_head(
            &mut out,
            &Method::GET,
            "/",
            &no_host,
            &added,
            Some("10.0.0.1:80"),
            false,
        );
        assert_eq!(
            out,
            b"GET / HTTP/1.1\r\nhost: 10.0.0.1:80\r\nx-forwarded-for: 10.0.0.9\r\n\r\n"
        );
        assert_eq!(
            &encode_data(Bytes::from_static(b"hello"), true)[..],
            b"5\r\nhello\r\n"
        );
        assert_eq!(&encode_end(None, true)[..], b"0\r\n\r\n");
        assert!(encode_end(None, false).is_empty());
    }
}
