//! The byte stream under a connection, as the drivers use it: reads into a buffer once
//! bytes are there, vectored writes when the peer takes them, the end of writing, and the
//! TCP socket underneath (socket options, peeks, the lingering close).
//!
//! The drivers hold a client connection as a [`Transport`] object, so any stream that can
//! do these plugs in beside plain TCP (TLS next: it decrypts into the same buffers and
//! sends its `close_notify` before the FIN).

use std::fmt;
use std::io::{self, IoSlice};
use std::task::{ready, Context, Poll};

use bytes::BytesMut;
use tokio::net::TcpStream;

use super::{IoStats, PeerClose};

/// A connection's byte stream.
pub trait Transport: Send + Sync + fmt::Debug + 'static {
    /// Reads what the peer sent into `buf`, making room for a read of `read` bytes once
    /// bytes are there (a connection that waits holds no buffer); `Ok(0)` is the peer's end
    /// of the stream. Counted in `stats`.
    fn poll_fill(
        &self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        stats: &IoStats,
        read: usize,
    ) -> Poll<io::Result<usize>>;

    /// Writes some of `bufs`, in order; how many bytes went.
    fn poll_write_vectored(
        &self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>>;

    /// Ends the writing side, once (a FIN).
    fn send_fin(&self, stats: &IoStats);

    /// The TCP socket underneath.
    fn tcp(&self) -> &TcpStream;
}

impl Transport for TcpStream {
    fn poll_fill(
        &self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        stats: &IoStats,
        read: usize,
    ) -> Poll<io::Result<usize>> {
        poll_fill(self, buf, stats, read, cx)
    }

    fn poll_write_vectored(
        &self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.poll_write_ready(cx))?;
            match self.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn send_fin(&self, stats: &IoStats) {
        super::send_fin(self, stats);
    }

    fn tcp(&self) -> &TcpStream {
        self
    }
}

/// Writes all of `bytes` to `t`, counted in `stats`.
pub async fn write_all(t: &dyn Transport, stats: &IoStats, bytes: &[u8]) -> io::Result<()> {
    write_parts(t, stats, &[bytes]).await
}

/// Writes all of `parts`, in order, to `t`: vectored, without copying them. Counted in
/// `stats`.
pub async fn write_parts(t: &dyn Transport, stats: &IoStats, parts: &[&[u8]]) -> io::Result<()> {
    let mut idx = 0;
    let mut off = 0;
    while idx < parts.len() {
        if parts[idx].len() == off {
            idx += 1;
            off = 0;
            continue;
        }
        let mut slices = [IoSlice::new(&[]); 3];
        let mut n = 0;
        for (i, p) in parts[idx..].iter().take(slices.len()).enumerate() {
            slices[i] = IoSlice::new(if i == 0 { &p[off..] } else { p });
            n += 1;
        }
        let wrote = std::future::poll_fn(|cx| t.poll_write_vectored(cx, &slices[..n]));
        let mut wrote = match stats.written(wrote.await)? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            w => w,
        };
        while wrote > 0 && idx < parts.len() {
            let left = parts[idx].len() - off;
            if wrote >= left {
                wrote -= left;
                idx += 1;
                off = 0;
            } else {
                off += wrote;
                wrote = 0;
            }
        }
    }
    Ok(())
}

/// Reads what `stream` has into `buf`, making room for a read of `read` bytes once bytes
/// are there; `Ok(0)` is the FIN.
pub fn poll_fill(
    stream: &TcpStream,
    buf: &mut BytesMut,
    stats: &IoStats,
    read: usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    loop {
        if let Err(e) = ready!(stream.poll_read_ready(cx)) {
            stats.record_error(&e);
            return Poll::Ready(Err(e));
        }
        // The buffer grows only once there is something to read: a connection that waits
        // holds none.
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(read);
        }
        // A read shorter than the room it had emptied the socket: the cached readiness is
        // dropped with it (the closure's `WouldBlock`), so the next read waits for the
        // kernel's next event instead of a syscall that would find nothing. The readiness
        // dropped is the one seen before this read: an event that arrives after it stands.
        let room = buf.capacity() - buf.len();
        let mut short = 0;
        let read = stream.try_io(tokio::io::Interest::READABLE, || {
            match stream.try_read_buf(buf) {
                Ok(n) if n > 0 && n < room => {
                    short = n;
                    Err(io::ErrorKind::WouldBlock.into())
                }
                r => r,
            }
        });
        let read = match read {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && short > 0 => Ok(short),
            r => r,
        };
        match read {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                stats.record_error(&e);
                return Poll::Ready(Err(e));
            }
            Ok(0) => {
                stats.record_peer(PeerClose::Fin);
                return Poll::Ready(Ok(0));
            }
            Ok(n) => {
                stats.add_read(n);
                return Poll::Ready(Ok(n));
            }
        }
    }
}
