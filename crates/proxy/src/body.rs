//! Bodies in both directions, streamed frame by frame (backpressure: a frame is
//! only polled when the other side can take it), with progress tracking.
//!
//! * [`UpBody`]: the request body linger streams upstream.
//! * [`UpstreamBody`]: a response body read from an upstream connection (framed by
//!   `linger_h1`'s decoder), which owns the connection until the body ends and meanwhile
//!   sends what is left of a request body that was still streaming.
//! * [`DownBody`]: the response body linger sends downstream; its [`Exchange`] guard
//!   finishes the request when the body ends, fails or is dropped (access log, metrics,
//!   pool check-in or close, with the connection handed back).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use linger_h1::{BodyDecoder, Framing};
use std::task::ready;

use crate::error::BodyFailure;
use crate::upstream::conn::ReadAhead;
use crate::upstream::exchange::{encode_data, encode_end, Tail};
use crate::upstream::UpstreamConn;
use bytes::Buf;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How far a request body got, shared with the request path.
#[derive(Debug, Default)]
pub struct BodyProgress {
    bytes: AtomicU64,
    done: AtomicBool,
    failed: AtomicBool,
}

// === impl BodyProgress ===

impl BodyProgress {
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The body was read to its end.
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    pub fn mark_done(&self) {
        self.done.store(true, Ordering::Release);
    }
}

/// Holds a request body back until the upstream said `100 Continue` (or a final status, or
/// a short timer), so that `Expect: 100-continue` works end to end (R12).
#[derive(Debug, Default)]
pub struct ExpectGate {
    open: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

// === impl ExpectGate ===

impl ExpectGate {
    pub fn open(&self) {
        self.open.store(true, Ordering::Release);
        if let Some(w) = self.waker.lock().expect("gate lock").take() {
            w.wake();
        }
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    fn poll_open(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_open() {
            return Poll::Ready(());
        }
        *self.waker.lock().expect("gate lock") = Some(cx.waker().clone());
        if self.is_open() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// The downstream request body, forwarded upstream as it arrives.
#[derive(Debug)]
pub struct StreamBody {
    pub first: Option<Frame<Bytes>>,
    pub inner: crate::downstream::ReqBody,
    pub progress: Arc<BodyProgress>,
    pub gate: Option<Arc<ExpectGate>>,
    pub ended: bool,
}

// === impl StreamBody ===

impl StreamBody {
    /// A body whose length is used up is not polled again, so the end is noticed here.
    fn check_end(&mut self) {
        if self.first.is_none() && self.inner.is_end_stream() && !self.ended {
            self.ended = true;
            self.progress.mark_done();
        }
    }
}

/// The request body linger streams upstream.
#[derive(Debug)]
pub enum UpBody {
    Stream(Box<StreamBody>),
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpBody::Stream(s) => {
                if s.ended {
                    return Poll::Ready(None);
                }
                if let Some(gate) = &s.gate {
                    if gate.poll_open(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
                if let Some(f) = s.first.take() {
                    if let Some(d) = f.data_ref() {
                        s.progress
                            .bytes
                            .fetch_add(d.len() as u64, Ordering::Relaxed);
                    }
                    s.check_end();
                    return Poll::Ready(Some(Ok(f)));
                }
                match Pin::new(&mut s.inner).poll_frame(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(None) => {
                        s.ended = true;
                        s.progress.mark_done();
                        Poll::Ready(None)
                    }
                    Poll::Ready(Some(Ok(f))) => {
                        if let Some(d) = f.data_ref() {
                            s.progress
                                .bytes
                                .fetch_add(d.len() as u64, Ordering::Relaxed);
                        }
                        if f.is_trailers() {
                            // Trailers are always the last frame.
                            s.ended = true;
                            s.progress.mark_done();
                        } else {
                            s.check_end();
                        }
                        Poll::Ready(Some(Ok(f)))
                    }
                    Poll::Ready(Some(Err(e))) => {
                        s.ended = true;
                        s.progress.failed.store(true, Ordering::Relaxed);
                        Poll::Ready(Some(Err(e)))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::Stream(s) => s.ended || (s.first.is_none() && s.inner.is_end_stream()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::Stream(s) => {
                let first = s
                    .first
                    .as_ref()
                    .and_then(|f| f.data_ref())
                    .map_or(0, |d| d.len() as u64);
                let inner = s.inner.size_hint();
                let mut h = SizeHint::new();
                h.set_lower(inner.lower() + first);
                if let Some(u) = inner.upper() {
                    h.set_upper(u + first);
                }
                h
            }
        }
    }
}

/// A response body read from an upstream connection, which it owns until the body ends.
#[derive(Debug)]
pub struct UpstreamBody {
    conn: Option<UpstreamConn>,
    /// The rest of the request body, sent as the response is read.
    tail: Option<(Tail, UpBody)>,
    decoder: BodyDecoder,
    /// Bytes left of a `Content-Length` body, for the size hint.
    remaining: Option<u64>,
    trailers_sent: bool,
    /// How much the next read of the body takes, following the client.
    ahead: ReadAhead,
}

// === impl UpstreamBody ===

impl UpstreamBody {
    pub fn new(conn: UpstreamConn, framing: Framing, tail: Option<(Tail, UpBody)>) -> Self {
        Self {
            conn: Some(conn),
            tail,
            decoder: BodyDecoder::new(framing),
            remaining: match framing {
                Framing::Length(n) => Some(n),
                Framing::Empty => Some(0),
                _ => None,
            },
            trailers_sent: false,
            ahead: ReadAhead::new(),
        }
    }

    /// The client took the last piece of the body, at once or (`waited`) not.
    pub fn client_took(&mut self, waited: bool) {
        self.ahead.client_took(waited);
    }

    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyFailure>>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some((tail, body)) = self.tail.as_mut() {
            if poll_tail(tail, body, conn, cx) {
                self.tail = None;
            }
        }
        loop {
            if self.decoder.is_done() {
                self.tail = None;
                if !self.trailers_sent {
                    self.trailers_sent = true;
                    let raw = self.decoder.take_trailers();
                    if !raw.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::trailers(parse_trailers(&raw)))));
                    }
                }
                return Poll::Ready(None);
            }
            if !conn.buf.is_empty() {
                let step = match self.decoder.decode(&conn.buf) {
                    Ok(s) => s,
                    Err(e) => return Poll::Ready(Some(Err(BodyFailure::Malformed(e)))),
                };
                let used = conn.buf.split_to(step.consumed).freeze();
                if self.decoder.is_done() && conn.buf.is_empty() {
                    conn.settle();
                }
                if let Some(r) = step.data.filter(|r| !r.is_empty()) {
                    if let Some(left) = self.remaining.as_mut() {
                        *left -= r.len() as u64;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(used.slice(r)))));
                }
                continue;
            }
            match ready!(conn.poll_fill(cx, &mut self.ahead)) {
                Ok(0) => {
                    if let Err(e) = self.decoder.eof() {
                        let _ = e;
                        return Poll::Ready(Some(Err(BodyFailure::PeerGone(conn.stats.peer()))));
                    }
                }
                Ok(_) => {}
                Err(_) => return Poll::Ready(Some(Err(BodyFailure::PeerGone(conn.stats.peer())))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none()
            || (self.decoder.is_done() && self.trailers_sent)
            || self.remaining == Some(0)
    }
}

/// Sends what it can of a request body's rest without waiting; true when there is
/// nothing more to send (sent, failed, or the upstream stopped taking it).
fn poll_tail(
    tail: &mut Tail,
    body: &mut UpBody,
    conn: &UpstreamConn,
    cx: &mut Context<'_>,
) -> bool {
    loop {
        if !tail.pending.is_empty() {
            match conn.poll_write_some(cx, &tail.pending) {
                Poll::Ready(Ok(n)) => tail.pending.advance(n),
                Poll::Ready(Err(_)) => return true,
                Poll::Pending => return false,
            }
            continue;
        }
        if tail.stream_ended {
            return true;
        }
        match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Pending => return false,
            Poll::Ready(Some(Err(_))) => return true,
            Poll::Ready(None) => {
                tail.pending = encode_end(None, tail.chunked);
                tail.stream_ended = true;
            }
            Poll::Ready(Some(Ok(f))) => match f.into_data() {
                Ok(d) => tail.pending = encode_data(d, tail.chunked),
                Err(f) => {
                    tail.pending = encode_end(f.trailers_ref(), tail.chunked);
                    tail.stream_ended = true;
                }
            },
        }
    }
}

/// Trailer lines (each with its CRLF) as header fields; lines that are no field are left
/// out.
pub(crate) fn parse_trailers(raw: &[u8]) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for line in raw.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(&line[..colon]),
            http::HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        map.append(name, value);
    }
    map
}

/// Finishes a request when its response body ends, fails or is dropped. The upstream
/// connection the body came from, if any, is handed back with the outcome.
pub trait Exchange: Send + Sync + 'static {
    /// The body was sent to its end.
    fn complete(&mut self, bytes_out: u64, conn: Option<UpstreamConn>);
    /// The upstream body failed mid-way; the downstream response is being aborted (R11).
    fn upstream_failed(&mut self, bytes_out: u64, error: BodyFailure, conn: Option<UpstreamConn>);
    /// The body was dropped before its end: the downstream went away (R5).
    fn dropped(&mut self, bytes_out: u64, conn: Option<UpstreamConn>);
}

/// The response body linger sends downstream.
pub struct DownBody {
    kind: DownKind,
    bytes_out: u64,
    exchange: Option<Box<dyn Exchange>>,
    /// Fields linger adds to the head this body goes with (written with the head).
    pub(crate) added: crate::forward::ResponseAdded,
}

enum DownKind {
    Full(Option<Bytes>),
    Upstream(Box<UpstreamBody>),
}

impl std::fmt::Debug for DownBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DownBody")
            .field("bytes_out", &self.bytes_out)
            .finish()
    }
}

// === impl DownBody ===

impl DownBody {
    pub fn full(b: impl Into<Bytes>, exchange: Option<Box<dyn Exchange>>) -> Self {
        let b: Bytes = b.into();
        Self {
            kind: DownKind::Full((!b.is_empty()).then_some(b)),
            bytes_out: 0,
            exchange,
            added: Default::default(),
        }
    }

    pub fn upstream(body: UpstreamBody, exchange: Box<dyn Exchange>) -> Self {
        Self {
            kind: DownKind::Upstream(Box::new(body)),
            bytes_out: 0,
            exchange: Some(exchange),
            added: Default::default(),
        }
    }

    /// The client took the last piece of the body in one write, or (`waited`) linger had
    /// to wait for it: an upstream body reads ahead of it by as much as it keeps up with
    /// ([`ReadAhead`]).
    pub fn client_took(&mut self, waited: bool) {
        if let DownKind::Upstream(b) = &mut self.kind {
            b.client_took(waited);
        }
    }

    fn take_conn(&mut self) -> Option<UpstreamConn> {
        match &mut self.kind {
            DownKind::Upstream(b) => b.conn.take(),
            DownKind::Full(_) => None,
        }
    }

    fn finish(&mut self) {
        if let Some(mut ex) = self.exchange.take() {
            let conn = self.take_conn();
            ex.complete(self.bytes_out, conn);
        }
    }
}

impl Body for DownBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            DownKind::Full(b) => match b.take() {
                Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                None => Poll::Ready(None),
            },
            DownKind::Upstream(inner) => match inner.poll_frame(cx) {
                Poll::Ready(Some(Err(e))) => {
                    if let Some(mut ex) = this.exchange.take() {
                        let conn = this.take_conn();
                        ex.upstream_failed(this.bytes_out, e, conn);
                    }
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
                Poll::Ready(Some(Ok(f))) => Poll::Ready(Some(Ok(f))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        };
        match &polled {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.bytes_out += d.len() as u64;
                }
                // A body whose last frame was just produced is complete once the driver sees
                // is_end_stream; finish eagerly so the connection is pooled at once.
                if this.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(None) => this.finish(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            DownKind::Full(b) => b.is_none(),
            DownKind::Upstream(i) => i.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            DownKind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            DownKind::Upstream(i) => match i.remaining {
                Some(n) => SizeHint::with_exact(n),
                None => SizeHint::default(),
            },
        }
    }
}

impl Drop for DownBody {
    fn drop(&mut self) {
        if let Some(mut ex) = self.exchange.take() {
            let ended = self.is_end_stream();
            let conn = self.take_conn();
            if ended {
                ex.complete(self.bytes_out, conn);
            } else {
                ex.dropped(self.bytes_out, conn);
            }
        }
    }
}
