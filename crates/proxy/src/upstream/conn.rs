//! One upstream connection: a bare socket, its read buffer and its reuse state, owned by
//! one request at a time (or by the pool). No task of its own: whoever holds it reads and
//! writes it, and the pool looks at it while it is idle.
//!
//! Its close is explained by whoever ends it ([`UpstreamConn::close`]); a connection
//! dropped without a reason (the request that held it was cancelled) is `aborted`. The
//! close is counted, and entered in the registry, exactly once, in `Drop`.

use std::io;
use std::mem::MaybeUninit;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::time::Instant;

pub use crate::io::transport::poll_fill;
use crate::io::{IoStats, PeerClose};
use crate::observe::{CloseReason, ConnEntry, Metrics, Registry, Side};

/// The most an upstream connection reads ahead of its client. A response body moves one
/// read at a time: with a slow reader, one read waits in linger while the next fills this
/// buffer, so it bounds the memory a slow client costs (256 KiB made 0.5 MiB per slow
/// reader of a 1 MiB response; HAProxy's buffers are 16 KiB). 64 KiB reads still move a
/// large body in few wake-ups.
pub const UPSTREAM_READ_BUFFER: usize = 64 * 1024;
/// A read for a head (request or response): enough for most heads and the start of a
/// body. Kept small because every connection in the middle of an exchange holds one.
pub const HEAD_READ: usize = 4 * 1024;
/// A read of a request body.
pub const REQUEST_BODY_READ: usize = 16 * 1024;

/// What a look at an idle connection found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Nothing arrived: the connection looks usable.
    Open,
    /// The upstream closed or reset it, or it failed.
    Gone(PeerClose),
    /// Bytes arrived that no request asked for (R9).
    StrayBytes,
}

/// What an upstream connection needs to report its close.
#[derive(Debug)]
pub struct ConnCtx {
    pub metrics: Arc<Metrics>,
    pub registry: Arc<Registry>,
    /// The cluster's series of connects and open connections, cached so that opening and
    /// closing a connection does not look them up.
    pub connects: prometheus_client::metrics::counter::Counter,
    pub open: prometheus_client::metrics::gauge::Gauge,
}

/// A connection to one endpoint.
#[derive(Debug)]
pub struct UpstreamConn {
    pub id: u64,
    /// Shared only with the worker's sender while a request head waits in its queue
    /// (`io::outbox`): the sender's hold ends before the request's does.
    stream: Arc<TcpStream>,
    pub stats: Arc<IoStats>,
    /// Its entry in the registry (journal, request count).
    pub entry: Arc<ConnEntry>,
    pub endpoint: usize,
    pub created: Instant,
    /// Requests sent on it so far.
    pub requests: u64,
    /// Further requests allowed by a `Keep-Alive: max` hint or the configured limit.
    pub requests_left: Option<u64>,
    /// Did the current request get it from the pool?
    pub reused: bool,
    /// How long it sat idle in the pool before the current request took it.
    pub idle_age: Duration,
    /// Bytes read and not used yet. Empty (and released) while the connection is idle.
    pub buf: BytesMut,
    ctx: Arc<ConnCtx>,
    reason: Option<CloseReason>,
}

// === impl UpstreamConn ===

impl UpstreamConn {
    pub fn new(
        id: u64,
        stream: TcpStream,
        stats: Arc<IoStats>,
        entry: Arc<ConnEntry>,
        endpoint: usize,
        ctx: Arc<ConnCtx>,
    ) -> Self {
        ctx.connects.inc();
        ctx.open.inc();
        Self {
            id,
            stream: Arc::new(stream),
            stats,
            entry,
            endpoint,
            created: Instant::now(),
            requests: 0,
            requests_left: None,
            reused: false,
            idle_age: Duration::ZERO,
            buf: BytesMut::new(),
            ctx,
            reason: None,
        }
    }

    /// Closes the connection, naming why.
    pub fn close(mut self, reason: CloseReason) {
        self.reason = Some(reason);
    }

    /// Writes all of `bytes`; what the socket took is counted even when a later write
    /// fails.
    pub async fn write_all(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let n = write_some(&self.stream, &self.stats, bytes).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            bytes = &bytes[n..];
        }
        Ok(())
    }

    /// The socket and the counters, shared with the worker's sender for a queued head.
    pub fn shared(&self) -> (&Arc<TcpStream>, &Arc<IoStats>) {
        (&self.stream, &self.stats)
    }

    /// Reads what the socket has of a response body into `buf`: `Ok(0)` is the
    /// upstream's FIN.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        poll_fill(
            &self.stream,
            &mut self.buf,
            &self.stats,
            UPSTREAM_READ_BUFFER,
            cx,
        )
    }

    /// The socket, the read buffer and the counters, apart: for an exchange that writes
    /// the request body while it reads the response.
    pub fn split(&mut self) -> (&TcpStream, &mut BytesMut, &IoStats) {
        (&self.stream, &mut self.buf, &self.stats)
    }

    /// Writes some of `bytes` if the socket takes them now.
    pub fn poll_write_some(&self, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write(bytes) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(self.stats.written(r)),
            }
        }
    }

    /// What the upstream did since the last exchange: a FIN, an RST or stray bytes make
    /// the connection unusable. With `peek`, a non-blocking `MSG_PEEK` looks at the socket
    /// if the event loop saw it become readable since the last response (see
    /// [`UpstreamConn::settle`]); without, only what reads already saw counts.
    pub fn liveness(&self, peek: bool) -> Liveness {
        if !self.buf.is_empty() {
            return Liveness::StrayBytes;
        }
        match self.stats.peer() {
            PeerClose::Open if !peek => return Liveness::Open,
            PeerClose::Open => {}
            p => return Liveness::Gone(p),
        }
        // Only when the event loop saw the socket become readable since the last response
        // is there anything to look at; otherwise the look costs no syscall.
        let mut one = [MaybeUninit::<u8>::uninit(); 1];
        let sock = socket2::SockRef::from(&self.stream);
        match self
            .stream
            .try_io(tokio::io::Interest::READABLE, || sock.peek(&mut one))
        {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Liveness::Open,
            Err(e) => {
                self.stats.record_error(&e);
                Liveness::Gone(self.stats.peer())
            }
            Ok(0) => {
                self.stats.record_peer(PeerClose::Fin);
                Liveness::Gone(PeerClose::Fin)
            }
            Ok(_) => Liveness::StrayBytes,
        }
    }

    /// A response ended exactly where its framing said: nothing more is due, so the
    /// socket's cached read readiness is dropped without a syscall, and the next exchange
    /// waits for the kernel's next event instead of trying a read that would find nothing.
    /// (Bytes that did arrive meanwhile are still found by the peek at checkout.)
    pub fn settle(&self) {
        let _ = self.stream.try_io(tokio::io::Interest::READABLE, || {
            Err::<(), _>(io::ErrorKind::WouldBlock.into())
        });
    }

    /// The socket, for a tunnel after a `101` (which owns the connection until it ends).
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Names the close without closing yet (a tunnel names it before it starts).
    pub fn set_close_reason(&mut self, reason: CloseReason) {
        self.reason = Some(reason);
    }
}

/// Writes some of `bytes` to `stream`, counted in `stats`.
pub async fn write_some(stream: &TcpStream, stats: &IoStats, bytes: &[u8]) -> io::Result<usize> {
    loop {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return stats.written(r),
        }
    }
}

impl Drop for UpstreamConn {
    fn drop(&mut self) {
        let reason = self.reason.unwrap_or(CloseReason::Aborted);
        let ctx = &self.ctx;
        let series = ctx.metrics.closed(Side::Upstream, reason);
        series.closes.inc();
        series
            .lifetime
            .observe(self.created.elapsed().as_secs_f64());
        ctx.open.dec();
        ctx.registry.close(&self.entry, reason);
        if reason.is_abnormal() {
            crate::downstream::log_journal(&self.entry, reason);
        }
        tracing::debug!(
            upstream_conn = self.id,
            reason = reason.as_str(),
            "upstream connection closed"
        );
    }
}
