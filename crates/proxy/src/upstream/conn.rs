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

/// How far an upstream connection reads ahead of its client while a response body
/// streams: the size of its next read, which follows the client.
///
/// A response body moves one read at a time: with a slow reader, one read waits in linger
/// to be written while the socket fills, so the read size bounds what a slow client costs
/// (1,000 slow readers of a 1 MiB response: 256 MiB RSS with reads fixed at 256 KiB, 74
/// MiB at 64 KiB; HAProxy's buffers are 16 KiB). A fast client of a large body, though,
/// is served with fewer wake-ups and system calls by bigger reads (1 MiB responses:
/// 256 KiB reads did 2,188–2,257 req/s where 64 KiB did 1,588–1,882). So reads start at
/// [`ReadAhead::MIN`] and double, up to [`ReadAhead::MAX`], each time a read filled its
/// room (the upstream had more) and the client took what it brought without making linger
/// wait; the first write that waits for the client brings them back to the minimum. The
/// buffer follows the size.
///
/// A slow reader makes linger wait early because the kernel queues at most
/// `tcp.notsent_lowat_bytes` (64 KiB) of unsent bytes on a client connection: without
/// that limit it takes the first few hundred KiB of a slow reader's response as if the
/// client kept up, and the reads grow before the first wait (1,000 slow readers of a 1 MiB
/// response: 222 MiB RSS instead of 82).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadAhead {
    size: usize,
    /// The last read filled its room.
    filled: bool,
    /// The size the connection's buffer was made for (0: none yet).
    made_for: usize,
}

// === impl ReadAhead ===

impl ReadAhead {
    pub const MIN: usize = 64 * 1024;
    pub const MAX: usize = 256 * 1024;

    pub const fn new() -> Self {
        Self {
            size: Self::MIN,
            filled: false,
            made_for: 0,
        }
    }

    /// The size of the next read.
    pub fn size(self) -> usize {
        self.size
    }

    /// A read ended; `filled` if it used all the room it had.
    pub fn read(&mut self, filled: bool) {
        self.filled = filled;
    }

    /// The client took a piece of the body: at once, or (`waited`) only after linger
    /// waited for it to read.
    pub fn client_took(&mut self, waited: bool) {
        if waited {
            self.size = Self::MIN;
        } else if self.filled {
            self.size = (self.size * 2).min(Self::MAX);
        }
        // One step per read: the pieces of one read (chunks) grow it once.
        self.filled = false;
    }

    /// Before a read into an empty buffer: whether the buffer, made for another size,
    /// should be let go, so that the read makes one of the size now (a buffer is reused
    /// from read to read while the size holds; grown in place it would take more than
    /// the size asks for).
    pub fn remake(&mut self) -> bool {
        let remake = self.made_for != self.size;
        self.made_for = self.size;
        remake
    }
}

impl Default for ReadAhead {
    fn default() -> Self {
        Self::new()
    }
}

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

    /// The socket and the counters, shared with the worker's sender for a queued head.
    pub fn shared(&self) -> (&Arc<TcpStream>, &Arc<IoStats>) {
        (&self.stream, &self.stats)
    }

    /// Reads what the socket has of a response body into `buf`, making room for a read
    /// of the size `ahead` gives and telling it whether the read filled its room: `Ok(0)`
    /// is the upstream's FIN.
    pub fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        ahead: &mut ReadAhead,
    ) -> Poll<io::Result<usize>> {
        if self.buf.is_empty() && ahead.remake() {
            self.buf = BytesMut::new();
        }
        let read = ready!(poll_fill(
            &self.stream,
            &mut self.buf,
            &self.stats,
            ahead.size(),
            cx
        ));
        ahead.read(self.buf.capacity() == self.buf.len());
        Poll::Ready(read)
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

#[cfg(test)]
mod tests {
    use super::ReadAhead;

    /// A client that keeps up with an upstream that always has more: the reads double
    /// up to the maximum and stay there.
    #[test]
    fn reads_grow_while_the_client_keeps_up_and_the_upstream_has_more() {
        let mut a = ReadAhead::new();
        assert_eq!(a.size(), ReadAhead::MIN);
        let mut sizes = vec![];
        for _ in 0..4 {
            a.read(true);
            a.client_took(false);
            sizes.push(a.size());
        }
        assert_eq!(
            sizes,
            [128 << 10, ReadAhead::MAX, ReadAhead::MAX, ReadAhead::MAX]
        );
    }

    /// Short reads (an upstream that sends a little at a time, a stream of events) keep
    /// the small size however fast the client is; several pieces of one read (chunks)
    /// grow it once.
    #[test]
    fn short_reads_do_not_grow_and_one_read_grows_once() {
        let mut a = ReadAhead::new();
        for _ in 0..5 {
            a.read(false);
            a.client_took(false);
        }
        assert_eq!(a.size(), ReadAhead::MIN);
        a.read(true);
        for _ in 0..3 {
            a.client_took(false);
        }
        assert_eq!(a.size(), 2 * ReadAhead::MIN);
    }

    /// The first write that waits for the client brings the reads back to the minimum
    /// and lets the bigger buffer go, once; a client that was slow from the start never
    /// makes it grow.
    #[test]
    fn a_client_that_makes_linger_wait_brings_reads_back_down() {
        let mut a = ReadAhead::new();
        for _ in 0..3 {
            a.read(true);
            a.client_took(false);
        }
        assert_eq!(a.size(), ReadAhead::MAX);
        a.read(true);
        a.client_took(true);
        assert_eq!(a.size(), ReadAhead::MIN);

        let mut slow = ReadAhead::new();
        for _ in 0..10 {
            slow.read(true);
            slow.client_took(true);
            assert_eq!(slow.size(), ReadAhead::MIN);
        }
    }

    /// The buffer is made again only when the size changed since it was made: reused
    /// from read to read otherwise.
    #[test]
    fn the_buffer_is_remade_only_when_the_size_changes() {
        let mut a = ReadAhead::new();
        assert!(a.remake(), "the first read makes one");
        assert!(!a.remake(), "the next reuses it");
        a.read(true);
        a.client_took(false);
        assert!(a.remake(), "grown");
        assert!(!a.remake());
        a.read(true);
        a.client_took(true);
        assert!(a.remake(), "back down: the bigger one is let go");
        a.read(true);
        a.client_took(true);
        assert!(!a.remake(), "still the minimum");
    }
}
