//! The downstream IO seam: every downstream socket passes through [`SensorIo`]; upstream
//! sockets are read and written by `upstream::UpstreamConn`, with the same [`IoStats`].
//!
//! `SensorIo` observes what the peer did (bytes, FIN, RST) and owns how linger closes a
//! socket: hyper's `poll_shutdown` becomes a write-side shutdown (a FIN right after the last
//! byte, never a delayed one: R8), and the connection's driver then calls [`linger_close`],
//! which reads and discards what the peer still sends until it closes or the linger time runs
//! out. A socket closed with unread bytes in its receive buffer makes the kernel send RST
//! and destroys the response the peer has not read yet (R4); lingering avoids that, and is
//! skipped when the peer already closed its side (nothing can be unread).
//!
//! The driver takes the socket back from hyper (`into_parts`) once hyper's connection future
//! has ended, whether it ended cleanly or with an error.

pub mod socket;

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::observe::journal::{ConnState, Journal};
use linger_h1::{FramingGuard, FramingViolation};

/// What linger saw the peer do to the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PeerClose {
    /// Still open, as far as linger knows.
    Open = 0,
    /// The peer sent FIN (a read returned 0).
    Fin = 1,
    /// The peer reset the connection (ECONNRESET / EPIPE).
    Rst = 2,
    /// Another socket error (unreachable, ...).
    Error = 3,
    /// The kernel gave up on the peer (ETIMEDOUT): TCP keepalive probes went unanswered or
    /// data stayed unacknowledged past `TCP_USER_TIMEOUT` (R6).
    TimedOut = 4,
}

impl PeerClose {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Fin,
            2 => Self::Rst,
            3 => Self::Error,
            4 => Self::TimedOut,
            _ => Self::Open,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Fin => "fin",
            Self::Rst => "rst",
            Self::Error => "error",
            Self::TimedOut => "timed_out",
        }
    }
}

/// Counters shared between the socket wrapper and whoever drives the connection.
#[derive(Debug, Default)]
pub struct IoStats {
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    peer: AtomicU8,
    /// errno of the read or write error that ended the connection, if any.
    errno: AtomicU64,
    fin_sent: AtomicBool,
    /// When armed, the next read that returns bytes records its time and notifies: the
    /// downstream driver uses it to start the header read timeout at a head's first byte.
    first_read_armed: AtomicBool,
    first_read_at: std::sync::Mutex<Option<Instant>>,
    /// What the framing guard refused, if it did.
    violation: std::sync::Mutex<Option<FramingViolation>>,
    /// What happened to this connection, in order (bounded).
    journal: Journal,
    /// Was a request in progress (by the journal's state) when the peer closed?
    peer_closed_busy: AtomicBool,
}

// === impl IoStats ===

impl IoStats {
    /// Forgets the last first-read time and records the next one.
    pub fn arm_first_read(&self) {
        *self.first_read_at.lock().expect("first read lock") = None;
        self.first_read_armed.store(true, Ordering::Release);
    }

    pub fn framing_violation(&self) -> Option<FramingViolation> {
        *self.violation.lock().expect("violation lock")
    }

    /// When the first byte after the last `arm_first_read` arrived.
    pub fn first_read_at(&self) -> Option<Instant> {
        *self.first_read_at.lock().expect("first read lock")
    }

    fn on_bytes_read(&self) {
        if self.first_read_armed.load(Ordering::Relaxed)
            && self.first_read_armed.swap(false, Ordering::AcqRel)
        {
            *self.first_read_at.lock().expect("first read lock") = Some(Instant::now());
            // Only the downstream side arms: the first byte of a request head.
            self.journal.set_state(ConnState::Reading);
        }
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Did the peer close (or reset) while a request was being read, waited on or answered?
    pub fn peer_closed_busy(&self) -> bool {
        self.peer_closed_busy.load(Ordering::Relaxed)
    }

    /// `n` bytes were read from the socket by whoever owns it.
    pub(crate) fn add_read(&self, n: usize) {
        self.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    pub fn bytes_written(&self) -> u64 {
        self.bytes_written.load(Ordering::Relaxed)
    }

    pub fn peer(&self) -> PeerClose {
        PeerClose::from_u8(self.peer.load(Ordering::Relaxed))
    }

    pub fn errno(&self) -> Option<i32> {
        match self.errno.load(Ordering::Relaxed) {
            0 => None,
            e => Some(e as i32),
        }
    }

    pub(crate) fn record_peer(&self, p: PeerClose) {
        // The first observation wins: a FIN followed by a failed write is still a FIN.
        if self
            .peer
            .compare_exchange(0, p as u8, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.peer_closed_busy.store(
                matches!(
                    self.journal.state(),
                    ConnState::Reading | ConnState::Waiting | ConnState::Responding
                ),
                Ordering::Relaxed,
            );
            match p {
                PeerClose::Fin => self.journal.record("fin_received"),
                PeerClose::Rst => self.journal.record("rst_received"),
                PeerClose::TimedOut => self
                    .journal
                    .record_with("dead_peer", "ETIMEDOUT: keepalive or user timeout"),
                PeerClose::Error => self.journal.record_with(
                    "socket_error",
                    self.errno().map_or_else(String::new, |e| {
                        std::io::Error::from_raw_os_error(e).to_string()
                    }),
                ),
                PeerClose::Open => {}
            }
        }
    }

    pub(crate) fn written(&self, r: io::Result<usize>) -> io::Result<usize> {
        match &r {
            Ok(n) => {
                self.bytes_written.fetch_add(*n as u64, Ordering::Relaxed);
            }
            Err(e) => self.record_error(e),
        }
        r
    }

    pub(crate) fn record_error(&self, e: &io::Error) {
        if e.kind() == io::ErrorKind::WouldBlock {
            return;
        }
        if let Some(code) = e.raw_os_error() {
            let _ =
                self.errno
                    .compare_exchange(0, code as u64, Ordering::Relaxed, Ordering::Relaxed);
        }
        let kind = match e.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted => PeerClose::Rst,
            io::ErrorKind::TimedOut => PeerClose::TimedOut,
            _ => PeerClose::Error,
        };
        self.record_peer(kind);
    }
}

/// A TCP socket that records what happens to it and owns its close.
///
/// It owns the `TcpStream` and delegates to tokio's own reads and writes (which skip the
/// extra `EAGAIN` read after a partial read). Whoever drives the connection gets the socket
/// back when hyper is done with it (`into_parts`) and closes it with [`linger_close`].
#[derive(Debug)]
pub struct SensorIo {
    stream: TcpStream,
    stats: Arc<IoStats>,
    guard: Option<Box<FramingGuard>>,
    /// Bytes the guard held back and has released, handed on before anything else.
    released: Vec<u8>,
}

// === impl SensorIo ===

impl SensorIo {
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            stats: Arc::new(IoStats::default()),
            guard: None,
            released: Vec::new(),
        }
    }

    /// A downstream socket: requests are checked by the framing guard (R12) before hyper
    /// sees them.
    pub fn with_framing_guard(stream: TcpStream, max_head: usize) -> Self {
        Self {
            guard: Some(Box::new(FramingGuard::new(max_head))),
            ..Self::new(stream)
        }
    }

    pub fn stats(&self) -> Arc<IoStats> {
        self.stats.clone()
    }

    pub fn into_stream(self) -> TcpStream {
        self.stream
    }
}

impl AsyncRead for SensorIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.released.is_empty() {
                let n = this.released.len().min(buf.remaining());
                buf.put_slice(&this.released[..n]);
                this.released.drain(..n);
                return Poll::Ready(Ok(()));
            }
            let before = buf.filled().len();
            if let Err(e) = ready!(Pin::new(&mut this.stream).poll_read(cx, buf)) {
                this.stats.record_error(&e);
                return Poll::Ready(Err(e));
            }
            let n = buf.filled().len() - before;
            if n == 0 {
                if buf.remaining() > 0 {
                    this.stats.record_peer(PeerClose::Fin);
                }
                // A request line cut short by the end: hand on what came of it.
                if let Some(held) = this.guard.as_mut().map(|g| g.take_held()) {
                    if !held.is_empty() {
                        this.released = held;
                        continue;
                    }
                }
                return Poll::Ready(Ok(()));
            }
            this.stats.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
            this.stats.on_bytes_read();
            let Some(guard) = this.guard.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            match guard.feed(&mut buf.filled_mut()[before..]) {
                Err(v) => {
                    // Withhold the whole read: hyper never parses the request.
                    buf.set_filled(before);
                    *this.stats.violation.lock().expect("violation lock") = Some(v);
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, v)));
                }
                Ok(fed) => {
                    let keep = n - fed.hold;
                    if let Some(mut earlier) = fed.release {
                        // Held bytes go first; this read's bytes follow them.
                        earlier.extend_from_slice(&buf.filled()[before..before + keep]);
                        buf.set_filled(before);
                        this.released = earlier;
                        continue;
                    }
                    buf.set_filled(before + keep);
                    if keep > 0 {
                        return Poll::Ready(Ok(()));
                    }
                    // Everything read is held: read on (or wait for more).
                }
            }
        }
    }
}

impl AsyncWrite for SensorIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = ready!(Pin::new(&mut this.stream).poll_write(cx, buf));
        Poll::Ready(this.stats.written(r))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = ready!(Pin::new(&mut this.stream).poll_write_vectored(cx, bufs));
        Poll::Ready(this.stats.written(r))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// A FIN right after the last byte; the driver lingers afterwards.
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // After a framing violation the driver still owes the client a 400: it sends the
        // FIN after that.
        if self.stats.framing_violation().is_none() {
            send_fin(&self.stream, &self.stats);
        }
        Poll::Ready(Ok(()))
    }
}

/// Shuts down the write side once; errors (the peer already reset) are recorded, not raised.
pub fn send_fin(stream: &TcpStream, stats: &IoStats) {
    if stats.fin_sent.swap(true, Ordering::Relaxed) {
        return;
    }
    stats.journal.record("fin_sent");
    if let Err(e) = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write) {
        if e.kind() != io::ErrorKind::NotConnected {
            stats.record_error(&e);
        }
    }
}

/// How a graceful close ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LingerOutcome {
    /// The peer had already closed its side: nothing could be unread, no wait.
    PeerAlreadyClosed,
    /// The peer closed (FIN) while linger was reading and discarding.
    PeerClosed { discarded: u64 },
    /// The peer reset the connection while linger was draining.
    PeerReset { discarded: u64 },
    /// The linger time ran out; the socket was closed with the peer still open.
    TimedOut { discarded: u64 },
}

/// How much of what arrives while lingering is kept, to name a request that came too late.
pub const LINGER_KEEP: usize = 1024;

/// Flushes nothing (writes are unbuffered here), sends FIN, then reads and discards until
/// the peer closes or `linger` passes. Dropping the stream afterwards closes the socket.
/// The first [`LINGER_KEEP`] bytes discarded are kept in `first`.
pub async fn linger_close(
    stream: &TcpStream,
    stats: &IoStats,
    linger: Duration,
    first: &mut Vec<u8>,
) -> LingerOutcome {
    send_fin(stream, stats);
    match stats.peer() {
        PeerClose::Fin | PeerClose::Rst | PeerClose::Error | PeerClose::TimedOut => {
            return LingerOutcome::PeerAlreadyClosed
        }
        PeerClose::Open => {}
    }
    let deadline = Instant::now() + linger;
    let mut scratch = [0u8; 4096];
    let mut discarded = 0u64;
    loop {
        let read = tokio::time::timeout_at(deadline, async {
            loop {
                stream.readable().await?;
                match stream.try_read(&mut scratch) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    other => return other,
                }
            }
        })
        .await;
        match read {
            Err(_elapsed) => return LingerOutcome::TimedOut { discarded },
            Ok(Ok(0)) => {
                stats.record_peer(PeerClose::Fin);
                return LingerOutcome::PeerClosed { discarded };
            }
            Ok(Ok(n)) => {
                let keep = n.min(LINGER_KEEP.saturating_sub(first.len()));
                first.extend_from_slice(&scratch[..keep]);
                discarded += n as u64;
                stats.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                stats.record_error(&e);
                return LingerOutcome::PeerReset { discarded };
            }
        }
    }
}
