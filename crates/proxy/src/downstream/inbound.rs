//! The client's side of one connection as the request path sees it: the socket, the bytes
//! read ahead of the request path, and the body of the request in flight ([`ReqBody`]),
//! decoded by `linger_h1`'s strict decoder as it is read.
//!
//! The connection's driver and the request's body share it: the body reads while the
//! request path pulls it; the driver reads only when no body is being read (the next head,
//! or watching for the client leaving). An idle connection's buffer is released.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use linger_h1::{BodyDecoder, BodyError, Framing, FramingViolation};

use crate::body::BoxError;
use crate::io::IoStats;
use crate::io::Transport;
use crate::upstream::conn::REQUEST_BODY_READ;

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What the driver and the request body share. Built over a concrete transport
/// (`Shared<TcpStream>`) and used as a `Shared` over any.
#[derive(Debug)]
pub struct Shared<T: ?Sized + Transport = dyn Transport> {
    pub stats: Arc<IoStats>,
    pub inbound: Mutex<Inbound>,
    /// Last, so that the transport's type can be forgotten behind the pointer.
    pub stream: T,
}

/// Bytes read and the body being read. (Small numbers: every idle connection keeps it.)
#[derive(Debug, Default)]
pub struct Inbound {
    /// Read and not used yet: the rest of a body, or the next request.
    pub buf: BytesMut,
    /// The body of the request in flight, while it is not read to its end. (Boxed, as
    /// `ahead`: every idle connection keeps this struct, and only bodies need them.)
    decoder: Option<Box<BodyDecoder>>,
    /// A second decoder that checks every byte as soon as it is read, ahead of what the
    /// request path has pulled: a body that breaks its framing anywhere in what arrived
    /// is refused before any of those bytes is handed on (as the gate judged whole reads).
    ahead: Option<Box<BodyDecoder>>,
    /// How far into `buf` the look-ahead has checked.
    ahead_pos: u32,
    /// What the look-ahead found wrong.
    broken: Option<BodyError>,
    /// `Expect: 100-continue`: the `100` goes out when the body is first pulled; bytes of
    /// it not written yet.
    continue_left: u8,
}

// === impl Inbound ===

impl Inbound {
    /// A request with this body framing starts.
    pub fn start_body(&mut self, framing: Framing, expect_continue: bool) {
        self.decoder = match framing {
            Framing::Empty | Framing::Length(0) => None,
            f => Some(Box::new(BodyDecoder::new(f))),
        };
        self.continue_left = if expect_continue && self.decoder.is_some() {
            CONTINUE.len() as u8
        } else {
            0
        };
        self.ahead = self.decoder.clone();
        self.ahead_pos = 0;
        self.broken = None;
        self.check_ahead();
    }

    /// Runs the look-ahead over the bytes read since it last ran.
    fn check_ahead(&mut self) {
        while let Some(a) = self.ahead.as_mut() {
            if a.is_done() {
                self.ahead = None;
                break;
            }
            let pos = self.ahead_pos as usize;
            if pos >= self.buf.len() {
                break;
            }
            match a.decode(&self.buf[pos..]) {
                Ok(step) if step.consumed == 0 => break,
                // What is read ahead is bounded by the reads of one body (far below 4 GiB).
                Ok(step) => self.ahead_pos = u32::try_from(pos + step.consumed).unwrap_or(u32::MAX),
                Err(e) => {
                    self.broken = Some(e);
                    self.ahead = None;
                }
            }
        }
    }

    /// Is a request body still being read?
    pub fn body_pending(&self) -> bool {
        self.decoder.is_some()
    }

    /// An idle connection holds no buffer.
    pub fn release_if_empty(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
        }
    }
}

/// The body of a request, read from the client as the request path pulls it.
#[derive(Debug)]
pub struct ReqBody {
    shared: Arc<Shared>,
    /// Bytes left of a `Content-Length` body.
    remaining: Option<u64>,
    ended: bool,
}

// === impl ReqBody ===

impl ReqBody {
    pub fn new(shared: Arc<Shared>, framing: Framing) -> Self {
        let (remaining, ended) = match framing {
            Framing::Empty | Framing::Length(0) => (Some(0), true),
            Framing::Length(n) => (Some(n), false),
            _ => (None, false),
        };
        Self {
            shared,
            remaining,
            ended,
        }
    }

    fn fail(&mut self, e: BodyError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.ended = true;
        if e != BodyError::Truncated {
            // The body broke its framing: the request is refused as a whole (R12).
            self.shared.stats.set_violation(FramingViolation::from(e));
        }
        Poll::Ready(Some(Err(Box::new(e))))
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        let shared = this.shared.clone();
        let mut ib = shared.inbound.lock().expect("inbound lock");
        while ib.continue_left > 0 {
            let from = CONTINUE.len() - usize::from(ib.continue_left);
            let wrote = ready!(shared
                .stream
                .poll_write_vectored(cx, &[std::io::IoSlice::new(&CONTINUE[from..])]));
            match shared.stats.written(wrote) {
                Ok(0) => {
                    let e = std::io::Error::from(std::io::ErrorKind::WriteZero);
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
                Ok(n) => ib.continue_left -= u8::try_from(n).unwrap_or(u8::MAX),
                Err(e) => {
                    shared.stats.record_error(&e);
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
        }
        loop {
            let ib = &mut *ib;
            if let Some(e) = ib.broken.take() {
                ib.decoder = None;
                return this.fail(e);
            }
            let Some(decoder) = ib.decoder.as_mut() else {
                this.ended = true;
                return Poll::Ready(None);
            };
            if decoder.is_done() {
                let trailers = decoder.take_trailers();
                ib.decoder = None;
                this.ended = true;
                if trailers.is_empty() {
                    return Poll::Ready(None);
                }
                return Poll::Ready(Some(Ok(Frame::trailers(crate::body::parse_trailers(
                    &trailers,
                )))));
            }
            if !ib.buf.is_empty() {
                let step = match decoder.decode(&ib.buf) {
                    Ok(s) => s,
                    Err(e) => return this.fail(e),
                };
                let used = ib.buf.split_to(step.consumed).freeze();
                ib.ahead_pos = ib
                    .ahead_pos
                    .saturating_sub(u32::try_from(step.consumed).unwrap_or(u32::MAX));
                if decoder.is_done() && this.remaining.is_some() {
                    // The end is known now: the next poll finds nothing more.
                    ib.decoder = None;
                }
                if let Some(r) = step.data.filter(|r| !r.is_empty()) {
                    if let Some(left) = this.remaining.as_mut() {
                        *left -= r.len() as u64;
                    }
                    if ib.decoder.is_none() {
                        this.ended = true;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(used.slice(r)))));
                }
                continue;
            }
            match ready!(shared
                .stream
                .poll_fill(cx, &mut ib.buf, &shared.stats, REQUEST_BODY_READ))
            {
                Ok(0) => {
                    let e = decoder.eof().err().unwrap_or(BodyError::Truncated);
                    return this.fail(e);
                }
                Ok(_) => ib.check_ahead(),
                Err(e) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.remaining == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
