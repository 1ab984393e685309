//! The byte stream under a connection, as the drivers use it: reads into a buffer once
//! bytes are there, vectored writes when the peer takes them, plain reads (what the
//! lingering close discards) and the end of writing.
//!
//! The drivers hold a client connection as a [`Transport`] object, so any stream that can
//! do these plugs in beside plain TCP (TLS next: it decrypts into the same buffers and
//! sends its `close_notify` before the FIN). A client's TCP connection is a [`Tcp`], which
//! joins the worker's event loop only once it has to wait; an upstream connection is a
//! registered [`TcpStream`] from its connect on.

use std::fmt;
use std::io::{self, IoSlice, Read};
use std::sync::Mutex;
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

    /// Writes what the peer takes now, without waiting (`WouldBlock` when it takes
    /// nothing): the worker's run of writes (`io::outbox`). Not counted.
    fn try_write(&self, bytes: &[u8]) -> io::Result<usize>;

    /// Reads what the peer sent into `buf` (what is discarded: not counted); `Ok(0)` is
    /// the peer's end of the stream.
    fn poll_read(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>>;

    /// Ends the writing side, once (a FIN).
    fn send_fin(&self, stats: &IoStats);

    /// Has the stream joined the event loop, so that a wait on it costs nothing more? (A
    /// [`Tcp`] joins when it first has to wait.)
    fn registered(&self) -> bool {
        true
    }
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
            match self.try_io(tokio::io::Interest::WRITABLE, || {
                write_some(&*socket2::SockRef::from(self), bufs)
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
        TcpStream::try_write(self, bytes)
    }

    fn poll_read(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.poll_read_ready(cx))?;
            match self.try_read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn send_fin(&self, stats: &IoStats) {
        super::send_fin(socket2::SockRef::from(self), stats);
    }
}

/// A client's TCP connection, which joins the worker's event loop only when it has to
/// wait.
///
/// A request that is in the socket when it is accepted and answered at once, on a
/// connection that then closes (`Connection: close`), never waits: the socket is read and
/// written as it came from `accept`, and costs no `epoll_ctl` to register it nor one to
/// remove it (HAProxy's speculative I/O does the same). The first read or write that would
/// block registers the socket, and everything after goes through the event loop. A read
/// that left the socket empty says the next one would block: that one registers without
/// trying.
///
/// (One lock over the state, taken by each operation: a connection's operations come from
/// its one task, so it is never contended, and the whole is no bigger than a registered
/// stream plus the lock, which keeps a connection's shared block in its size class.)
pub struct Tcp {
    state: Mutex<State>,
}

enum State {
    /// Not registered: read and written as `accept` gave it. `drained`: the last read
    /// emptied it.
    Plain {
        sock: std::net::TcpStream,
        drained: bool,
    },
    Registered(TcpStream),
    /// Registering failed, and the socket went with it.
    Lost,
}

// === impl Tcp ===

impl Tcp {
    /// A connection as `accept` gave it (non-blocking).
    pub fn new(sock: std::net::TcpStream) -> Self {
        Self {
            state: Mutex::new(State::Plain {
                sock,
                drained: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("transport lock")
    }
}

impl State {
    /// The plain socket, if it has not registered and may have bytes to read.
    fn readable_plain(&mut self) -> Option<(&std::net::TcpStream, &mut bool)> {
        match self {
            State::Plain {
                sock,
                drained: drained @ false,
            } => Some((sock, drained)),
            _ => None,
        }
    }

    /// The registered socket, registering it now if it has not yet.
    fn register(&mut self) -> io::Result<&TcpStream> {
        if matches!(self, State::Plain { .. }) {
            let State::Plain { sock, .. } = std::mem::replace(self, State::Lost) else {
                unreachable!("matched above");
            };
            *self = State::Registered(TcpStream::from_std(sock)?);
        }
        match self {
            State::Registered(t) => Ok(t),
            _ => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the socket was lost when it failed to register",
            )),
        }
    }
}

impl fmt::Debug for Tcp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tcp")
            .field("registered", &self.registered())
            .finish_non_exhaustive()
    }
}

impl Transport for Tcp {
    fn poll_fill(
        &self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        stats: &IoStats,
        read: usize,
    ) -> Poll<io::Result<usize>> {
        let mut state = self.lock();
        if let Some((sock, drained)) = state.readable_plain() {
            match fill_plain(sock, buf, read) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                r => {
                    let r = r.map(|(n, emptied)| {
                        *drained = emptied;
                        n
                    });
                    return Poll::Ready(counted(r, stats));
                }
            }
        }
        match state.register() {
            Ok(t) => poll_fill(t, buf, stats, read, cx),
            Err(e) => Poll::Ready(counted(Err(e), stats)),
        }
    }

    fn poll_write_vectored(
        &self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut state = self.lock();
        if let State::Plain { sock, .. } = &*state {
            match write_some(sock, bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                r => return Poll::Ready(r),
            }
        }
        state.register()?.poll_write_vectored(cx, bufs)
    }

    fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
        match &*self.lock() {
            State::Plain { sock, .. } => write_some(sock, &[IoSlice::new(bytes)]),
            State::Registered(t) => t.try_write(bytes),
            State::Lost => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    fn poll_read(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let mut state = self.lock();
        if let Some((sock, _)) = state.readable_plain() {
            match (&*sock).read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                r => return Poll::Ready(r),
            }
        }
        Transport::poll_read(state.register()?, cx, buf)
    }

    fn registered(&self) -> bool {
        matches!(*self.lock(), State::Registered(_))
    }

    fn send_fin(&self, stats: &IoStats) {
        match &*self.lock() {
            State::Plain { sock, .. } => super::send_fin(socket2::SockRef::from(sock), stats),
            State::Registered(t) => t.send_fin(stats),
            State::Lost => {}
        }
    }
}

thread_local! {
    /// Where a read of a plain socket lands before it is copied into the connection's
    /// buffer: safe code reads only into initialised bytes, and zeroing the buffer's room
    /// instead would touch pages that an idle connection's released buffer never needed.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; PLAIN_READ]);
}

/// The most one read of a plain socket takes (a request body's read).
const PLAIN_READ: usize = 16 * 1024;

/// One read of a plain (non-blocking) socket, of up to `read` bytes, appended to `buf`;
/// how many bytes came, and whether they left the socket empty (fewer than asked for).
fn fill_plain(
    mut sock: &std::net::TcpStream,
    buf: &mut BytesMut,
    read: usize,
) -> io::Result<(usize, bool)> {
    SCRATCH.with_borrow_mut(|scratch| {
        let want = read.clamp(1, scratch.len());
        let n = sock.read(&mut scratch[..want])?;
        buf.extend_from_slice(&scratch[..n]);
        Ok((n, n < want))
    })
}

/// Writes all of `bytes` to `t`, counted in `stats`.
pub async fn write_all(t: &dyn Transport, stats: &IoStats, bytes: &[u8]) -> io::Result<()> {
    write_parts(t, stats, &[bytes]).await
}

/// Writes all of `parts`, in order, to `t`: vectored, without copying them (empty parts
/// are skipped, and what is one slice goes as a plain send). Counted in `stats`.
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
        for (i, p) in parts[idx..].iter().enumerate() {
            let p = if i == 0 { &p[off..] } else { p };
            if p.is_empty() {
                continue;
            }
            if n == slices.len() {
                break;
            }
            slices[n] = IoSlice::new(p);
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

/// One write of `bufs` to a non-blocking socket: a plain send when there is one slice (it
/// costs the kernel less than a vectored write of one).
fn write_some(mut sock: impl io::Write, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    match bufs {
        [one] => sock.write(one),
        _ => sock.write_vectored(bufs),
    }
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
            r => return Poll::Ready(counted(r, stats)),
        }
    }
}

/// A read's result, counted in `stats`: bytes read, the peer's FIN (`Ok(0)`), or an error.
fn counted(read: io::Result<usize>, stats: &IoStats) -> io::Result<usize> {
    match &read {
        Err(e) => stats.record_error(e),
        Ok(0) => stats.record_peer(PeerClose::Fin),
        Ok(n) => stats.add_read(*n),
    }
    read
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::socket::{bind, Listening};
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn fill(t: &Tcp, buf: &mut BytesMut, stats: &IoStats) -> io::Result<usize> {
        std::future::poll_fn(|cx| t.poll_fill(cx, buf, stats, 4096)).await
    }

    async fn write(t: &Tcp, bytes: &[u8], stats: &IoStats) {
        write_all(t, stats, bytes).await.unwrap();
    }

    /// A client connected to a listener (and its writing side shut down first if `fin`),
    /// then accepted as a [`Tcp`].
    async fn accepted(fin: bool) -> (Tcp, tokio::net::TcpStream) {
        let l = Listening::new(bind("127.0.0.1:0".parse().unwrap()).unwrap()).unwrap();
        let mut client = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        if fin {
            client.shutdown().await.unwrap();
        }
        let (stream, _) = l.accept().await.unwrap();
        (Tcp::new(stream), client)
    }

    /// A request that is in the socket when it is accepted, answered at once, never makes
    /// the socket join the event loop; the next read, with the socket emptied, does, and
    /// the connection goes on through it.
    #[tokio::test]
    async fn a_connection_registers_only_when_it_has_to_wait() {
        let l = Listening::new(bind("127.0.0.1:0".parse().unwrap()).unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        client.write_all(b"first").await.unwrap();
        // Accepted once the bytes are there (the loopback delivers them with the ACK).
        let (stream, peer) = l.accept().await.unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        let t = Tcp::new(stream);
        let stats = IoStats::default();
        let mut buf = BytesMut::new();
        let mut got = 0;
        while got < 5 {
            got += fill(&t, &mut buf, &stats).await.unwrap();
        }
        assert_eq!(&buf[..], b"first");
        write(&t, b"answer", &stats).await;
        assert!(
            !t.registered(),
            "nothing waited: the socket stays out of the loop"
        );
        let mut answer = [0u8; 6];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"answer");

        // Nothing to read: the read (polled first by `join!`) registers the socket and
        // waits, and the bytes written after wake it.
        let (read, ()) = tokio::join!(fill(&t, &mut buf, &stats), async {
            client.write_all(b"second").await.unwrap();
        });
        assert!(read.unwrap() > 0);
        while buf.len() < 11 {
            fill(&t, &mut buf, &stats).await.unwrap();
        }
        assert_eq!(&buf[..], b"firstsecond");
        assert!(t.registered());
        write(&t, b"again", &stats).await;
        let mut again = [0u8; 5];
        client.read_exact(&mut again).await.unwrap();
        assert_eq!(&again, b"again");
        assert_eq!(stats.bytes_read.load(Ordering::Relaxed), 11);

        // The FIN goes out through the registered socket; the client's FIN reads as 0.
        t.send_fin(&stats);
        assert_eq!(client.read(&mut again).await.unwrap(), 0);
        client.shutdown().await.unwrap();
        assert_eq!(fill(&t, &mut buf, &stats).await.unwrap(), 0);
        assert_eq!(stats.peer(), PeerClose::Fin);
    }

    /// The end of the stream and the FIN work on a socket that never registered.
    #[tokio::test]
    async fn a_plain_socket_sees_the_peers_fin_and_sends_its_own() {
        let (t, mut client) = accepted(true).await;
        let stats = IoStats::default();
        let mut scratch = [0u8; 16];
        // The client's FIN may come after the accept: the read waits for it if so.
        let n = std::future::poll_fn(|cx| t.poll_read(cx, &mut scratch)).await;
        assert_eq!(n.unwrap(), 0);
        t.send_fin(&stats);
        assert!(stats.fin_sent.load(Ordering::Relaxed));
        assert_eq!(client.read(&mut scratch).await.unwrap(), 0);
    }

    /// Parts go out whole and in order: empty ones skipped, one slice as a plain send, and
    /// parts larger than the socket takes at once resumed where a write stopped (on a
    /// plain socket that then registers, and on a registered one).
    #[tokio::test]
    async fn parts_go_out_in_order_past_empty_ones_and_short_writes() {
        let (t, mut client) = accepted(false).await;
        let stats = IoStats::default();
        let big: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let parts: [&[u8]; 6] = [b"head;", b"", &big, b"", b";", b"tail"];
        let mut want = Vec::new();
        for p in parts {
            want.extend_from_slice(p);
        }
        let mut got = vec![0u8; want.len()];
        // First on the plain socket, which a write that would block registers; then on
        // the registered one, through the event loop.
        for registered_before in [false, true] {
            assert_eq!(t.registered(), registered_before);
            let (wrote, read) = tokio::join!(write_parts(&t, &stats, &parts), async {
                client.read_exact(&mut got).await
            });
            wrote.unwrap();
            read.unwrap();
            assert!(got == want, "the bytes arrive whole and in order");
            assert!(t.registered());
        }
        assert_eq!(stats.bytes_written(), 2 * want.len() as u64);
    }
}
