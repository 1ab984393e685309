//! What every socket records, and how linger closes a client connection.
//!
//! [`IoStats`] counts a connection's bytes and what the peer did (FIN, RST, a dead peer),
//! with its journal; the downstream driver and the upstream connection fill it as they read
//! and write. [`linger_close`] owns the close of a client connection: a FIN right after the
//! last byte (never a delayed one: R8), then it reads and discards what the peer still sends
//! until it closes or the linger time runs out. A socket closed with unread bytes in its
//! receive buffer makes the kernel send RST and destroys the response the peer has not read
//! yet (R4); lingering avoids that, and is skipped when the peer already closed its side
//! (nothing can be unread).

pub mod clock;
pub mod cpu;
pub mod cpu_time;
pub(crate) mod outbox;
pub mod socket;
pub mod transport;

pub use transport::Transport;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::observe::journal::Kind;
use crate::observe::journal::{ConnState, Journal};
use linger_h1::FramingViolation;

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
    errno: AtomicI32,
    fin_sent: AtomicBool,
    /// What the framing guard refused, if it did.
    violation: std::sync::Mutex<Option<FramingViolation>>,
    /// What happened to this connection, in order (bounded).
    journal: Journal,
    /// Was a request in progress (by the journal's state) when the peer closed?
    peer_closed_busy: AtomicBool,
}

// === impl IoStats ===

impl IoStats {
    /// A request body broke its framing (R12).
    pub fn set_violation(&self, v: FramingViolation) {
        let mut slot = self.violation.lock().expect("violation lock");
        slot.get_or_insert(v);
    }

    pub fn framing_violation(&self) -> Option<FramingViolation> {
        *self.violation.lock().expect("violation lock")
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
            e => Some(e),
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
                PeerClose::Fin => self.journal.record(Kind::FinReceived),
                PeerClose::Rst => self.journal.record(Kind::RstReceived),
                PeerClose::TimedOut => self
                    .journal
                    .record_with(Kind::DeadPeer, "ETIMEDOUT: keepalive or user timeout"),
                PeerClose::Error => self.journal.record_with(
                    Kind::SocketError,
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
            let _ = self
                .errno
                .compare_exchange(0, code, Ordering::Relaxed, Ordering::Relaxed);
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

/// Shuts down the write side once; errors (the peer already reset) are recorded, not raised.
pub fn send_fin(sock: socket2::SockRef<'_>, stats: &IoStats) {
    if stats.fin_sent.swap(true, Ordering::Relaxed) {
        return;
    }
    stats.journal.record(Kind::FinSent);
    if let Err(e) = sock.shutdown(std::net::Shutdown::Write) {
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
    /// The client asked for the close and nothing of it was pending: closed at once.
    NotNeeded,
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
    transport: &dyn Transport,
    stats: &IoStats,
    linger: Duration,
    first: &mut Vec<u8>,
) -> LingerOutcome {
    transport.send_fin(stats);
    match stats.peer() {
        PeerClose::Fin | PeerClose::Rst | PeerClose::Error | PeerClose::TimedOut => {
            return LingerOutcome::PeerAlreadyClosed
        }
        PeerClose::Open => {}
    }
    let deadline = Instant::now() + linger;
    // On the heap: a connection's future stays small when it is not lingering.
    let mut scratch = vec![0u8; 4096];
    let mut discarded = 0u64;
    loop {
        let read = tokio::time::timeout_at(
            deadline,
            std::future::poll_fn(|cx| transport.poll_read(cx, &mut scratch)),
        )
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
