//! Bodies in both directions, streamed frame by frame (hyper's backpressure: a frame is
//! only polled when the other side can take it), with progress tracking.
//!
//! * [`UpBody`]: the request body linger sends upstream.
//! * [`DownBody`]: the response body linger sends downstream; its [`Exchange`] guard
//!   finishes the request when the body ends, fails or is dropped (access log, metrics,
//!   pool check-in or abort).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::Notify;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How far a request body got, shared with the request path.
#[derive(Debug, Default)]
pub struct BodyProgress {
    bytes: AtomicU64,
    done: AtomicBool,
    failed: AtomicBool,
    pub changed: Notify,
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
        self.changed.notify_waiters();
    }

    /// Waits until the body is done or failed.
    pub async fn finished(&self) {
        loop {
            let notified = self.changed.notified();
            if self.is_done() || self.failed() {
                return;
            }
            notified.await;
        }
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
    pub inner: Incoming,
    pub progress: Arc<BodyProgress>,
    pub gate: Option<Arc<ExpectGate>>,
    pub ended: bool,
}

// === impl StreamBody ===

impl StreamBody {
    /// hyper stops polling a body whose length is used up, so the end is noticed here.
    fn check_end(&mut self) {
        if self.first.is_none() && self.inner.is_end_stream() && !self.ended {
            self.ended = true;
            self.progress.mark_done();
        }
    }
}

/// The request body linger sends upstream.
#[derive(Debug)]
pub enum UpBody {
    Empty,
    /// A body held in memory (a replayable buffer).
    Full(Option<Bytes>),
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
            UpBody::Empty => Poll::Ready(None),
            UpBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
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
                        s.progress.changed.notify_waiters();
                        Poll::Ready(Some(Err(Box::new(e))))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::Empty => true,
            UpBody::Full(b) => b.is_none(),
            UpBody::Stream(s) => s.ended || (s.first.is_none() && s.inner.is_end_stream()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::Empty => SizeHint::with_exact(0),
            UpBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
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

/// Finishes a request when its response body ends, fails or is dropped.
pub trait Exchange: Send + Sync + 'static {
    /// The body was sent to its end.
    fn complete(&mut self, bytes_out: u64);
    /// The upstream body failed mid-way; the downstream response is being aborted (R11).
    fn upstream_failed(&mut self, bytes_out: u64, error: &hyper::Error);
    /// The body was dropped before its end: the downstream went away (R5).
    fn dropped(&mut self, bytes_out: u64);
}

/// The response body linger sends downstream.
pub struct DownBody {
    kind: DownKind,
    bytes_out: u64,
    exchange: Option<Box<dyn Exchange>>,
}

enum DownKind {
    Full(Option<Bytes>),
    Upstream(Incoming),
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
        }
    }

    pub fn upstream(body: Incoming, exchange: Box<dyn Exchange>) -> Self {
        Self {
            kind: DownKind::Upstream(body),
            bytes_out: 0,
            exchange: Some(exchange),
        }
    }

    fn finish(&mut self) {
        if let Some(mut ex) = self.exchange.take() {
            ex.complete(self.bytes_out);
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
            DownKind::Upstream(inner) => match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(Some(Err(e))) => {
                    if let Some(mut ex) = this.exchange.take() {
                        ex.upstream_failed(this.bytes_out, &e);
                    }
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
                other => other.map(|o| o.map(|r| r.map_err(|e| Box::new(e) as BoxError))),
            },
        };
        match &polled {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.bytes_out += d.len() as u64;
                }
                // A body whose last frame was just produced is complete once hyper sees
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
            DownKind::Upstream(i) => i.size_hint(),
        }
    }
}

impl Drop for DownBody {
    fn drop(&mut self) {
        if let Some(mut ex) = self.exchange.take() {
            let ended = match &self.kind {
                DownKind::Full(b) => b.is_none(),
                DownKind::Upstream(i) => i.is_end_stream(),
            };
            if ended {
                ex.complete(self.bytes_out);
            } else {
                ex.dropped(self.bytes_out);
            }
        }
    }
}
