//! The small writes of a worker's turn, sent in a run at the end of it.
//!
//! A worker's turn serves every connection its event loop found ready: a client's request
//! read and routed, an upstream's response read and passed on. Written at once, each
//! write went out between the reads of the turn, one every 12 to 14 µs: a peer that
//! handles one in less than that finished it and went to sleep before the next came, and
//! every next write cost a wakeup (an IPI when the peer's CPU had halted, and a preemption
//! of the worker when the peer was woken onto the worker's own CPU). HAProxy reads all that
//! is ready, then sends. Here a request head without a streaming body, and a response that
//! fits one write, is queued instead, and the worker's sender, a task woken by the first
//! write queued in a turn and so polled after the turn's other tasks, writes the queued
//! bytes one after another: the answers first, then the requests, each in the order they
//! came.
//!
//! A request's task does not wait for its head: it goes on to wait for the response, which
//! cannot come before the head went, and nothing else writes on the upstream connection
//! meanwhile (only heads without a body to stream are queued). A response's task waits
//! until its bytes went ([`Sent::Written`]): whatever it writes next on the connection (the
//! next response, a FIN) comes after them.
//!
//! Bytes the socket did not take whole (it is full, or the write failed) go back to their
//! task, which is woken to write the rest, or to find the failure, itself. A task that goes
//! away before its bytes went (its client left, the drain cut it) takes them out of the
//! queue: nothing is written for it.
//!
//! Outside a worker (no sender on the thread, or a runtime that moves tasks between
//! threads), or once its sender has ended, nothing is queued and the task writes itself.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use tokio::net::TcpStream;

use crate::downstream::inbound::Shared;
use crate::io::IoStats;

thread_local! {
    static OUTBOX: RefCell<Outbox> = const { RefCell::new(Outbox::new()) };
}

/// Where queued bytes go.
#[derive(Debug)]
pub enum Dest {
    /// An upstream connection's socket, shared with its request while the head waits.
    Upstream(Arc<TcpStream>, Arc<IoStats>),
    /// A client connection (its transport and counters).
    Client(Arc<Shared>),
}

impl Dest {
    /// Writes what the socket takes now, without waiting.
    fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            Self::Upstream(s, _) => s.try_write(bytes),
            Self::Client(c) => c.stream.try_write(bytes),
        }
    }

    fn stats(&self) -> &IoStats {
        match self {
            Self::Upstream(_, stats) => stats,
            Self::Client(c) => &c.stats,
        }
    }
}

/// The writes queued on this thread, and what became of those handed back.
struct Outbox {
    queued: Vec<Queued>,
    /// Writes handed back, by ticket.
    returned: Vec<(u64, Sent)>,
    /// The sender's waker, while there is a sender on this thread.
    sender: Option<Waker>,
    /// Is the sender woken for the writes queued now?
    woken: bool,
    next: u64,
}

struct Queued {
    ticket: u64,
    dest: Dest,
    bytes: Vec<u8>,
    task: Waker,
    /// Hand the bytes back once they went whole, too ([`Sent::Written`]).
    report: bool,
}

impl Outbox {
    const fn new() -> Self {
        Self {
            queued: Vec::new(),
            returned: Vec::new(),
            sender: None,
            woken: false,
            next: 0,
        }
    }
}

/// A write in the worker's queue. Dropping it before the bytes went takes them out.
#[derive(Debug)]
pub struct Ticket {
    id: u64,
    /// Its outcome was taken: nothing of it is left in the queue to take out.
    spent: bool,
}

/// What became of a queued write.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// Still queued, or (unreported) written whole.
    Fine,
    /// Written whole: the buffer back, emptied, for the task to use again.
    Written(Vec<u8>),
    /// Not written whole: the rest (all of it when the sender ended first), to be written
    /// by the task.
    Rest(Vec<u8>),
    /// The write failed (counted in the connection's stats).
    Failed,
}

/// Queues `bytes` for `dest`, or gives them back when there is no sender on this thread.
/// `task` is woken when the bytes come back; with `report`, also once they went whole.
pub fn queue(dest: Dest, bytes: Vec<u8>, task: &Waker, report: bool) -> Result<Ticket, Vec<u8>> {
    OUTBOX.with_borrow_mut(|o| {
        let Some(sender) = o.sender.as_ref() else {
            return Err(bytes);
        };
        if !o.woken {
            o.woken = true;
            sender.wake_by_ref();
        }
        o.next += 1;
        let ticket = o.next;
        o.queued.push(Queued {
            ticket,
            dest,
            bytes,
            task: task.clone(),
            report,
        });
        Ok(Ticket {
            id: ticket,
            spent: false,
        })
    })
}

impl Ticket {
    /// What became of the write so far. After anything but `Fine` the ticket is spent.
    pub fn sent(&mut self) -> Sent {
        let id = self.id;
        let sent =
            OUTBOX.with_borrow_mut(|o| match o.returned.iter().position(|(t, _)| *t == id) {
                Some(i) => o.returned.swap_remove(i).1,
                None => Sent::Fine,
            });
        self.spent = sent != Sent::Fine;
        sent
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // A spent ticket (every response's, once written) costs no scan of the queue.
        if self.spent {
            return;
        }
        let id = self.id;
        // `try_with`: a task dropped as its thread ends has nothing left to take out.
        let _ = OUTBOX.try_with(|o| {
            if let Ok(mut o) = o.try_borrow_mut() {
                o.queued.retain(|q| q.ticket != id);
                o.returned.retain(|(t, _)| *t != id);
            }
        });
    }
}

/// Writes `bytes` to a client through the worker's run, and waits until they went. Gives
/// the buffer back (emptied) when the run wrote it; otherwise writes itself.
pub async fn write_client(shared: &Arc<Shared>, bytes: &mut Vec<u8>) -> io::Result<()> {
    let mut ticket: Option<Ticket> = None;
    let sent = std::future::poll_fn(|cx| {
        let Some(t) = &mut ticket else {
            let queued = queue(
                Dest::Client(shared.clone()),
                std::mem::take(bytes),
                cx.waker(),
                true,
            );
            return match queued {
                Ok(t) => {
                    ticket = Some(t);
                    Poll::Pending
                }
                Err(back) => Poll::Ready(Sent::Rest(back)),
            };
        };
        match t.sent() {
            Sent::Fine => Poll::Pending,
            other => Poll::Ready(other),
        }
    })
    .await;
    match sent {
        Sent::Written(buf) => {
            *bytes = buf;
            Ok(())
        }
        Sent::Rest(rest) => {
            let r = super::transport::write_all(&shared.stream, &shared.stats, &rest).await;
            *bytes = rest;
            bytes.clear();
            r
        }
        Sent::Failed => Err(io::ErrorKind::BrokenPipe.into()),
        Sent::Fine => unreachable!("the wait ends with the write's outcome"),
    }
}

/// The worker's sender: writes the queued bytes (answers first, then requests, each in
/// the order they came) whenever it is woken. Runs on the worker's runtime for as long as the worker does.
pub fn sender() -> impl Future<Output = ()> {
    Sender { started: false }
}

struct Sender {
    started: bool,
}

impl Future for Sender {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if !self.started {
            // The queue is the thread's: it serves a runtime whose tasks all run on this
            // thread (a worker's). On a runtime that moves tasks between threads, tasks
            // write for themselves.
            let here = tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor());
            if here.ok() != Some(tokio::runtime::RuntimeFlavor::CurrentThread) {
                return Poll::Ready(());
            }
        }
        self.started = true;
        let mut batch = OUTBOX.with_borrow_mut(|o| {
            o.woken = false;
            o.sender = Some(cx.waker().clone());
            std::mem::take(&mut o.queued)
        });
        // The answers first, then the requests, each in the order they came. (Requests
        // first, as HAProxy sends, measured worse here: in alternating rounds it was ahead
        // of the run of heads alone in 4 of 8, this order in 4 of 4.)
        batch.sort_by_key(|q| matches!(q.dest, Dest::Upstream(..)));
        let mut returned = Vec::new();
        for q in batch.drain(..) {
            match write_queued(&q.dest, q.bytes) {
                // Went whole, and nobody waits for that.
                Sent::Written(_) if !q.report => {}
                outcome => {
                    returned.push((q.ticket, outcome));
                    q.task.wake_by_ref();
                }
            }
        }
        OUTBOX.with_borrow_mut(|o| {
            o.returned.extend(returned);
            // Give the queue its room back: the next turn's writes need no allocation.
            if o.queued.is_empty() {
                o.queued = batch;
            }
        });
        Poll::Pending
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        if !self.started {
            return;
        }
        // The runtime is ending: what is still queued goes back to its tasks.
        let _ = OUTBOX.try_with(|o| {
            if let Ok(mut o) = o.try_borrow_mut() {
                o.sender = None;
                o.woken = false;
                for q in std::mem::take(&mut o.queued) {
                    q.task.wake_by_ref();
                    o.returned.push((q.ticket, Sent::Rest(q.bytes)));
                }
            }
        });
    }
}

/// Writes queued bytes: `Written` with the emptied buffer when they went whole, or what
/// their task gets back.
fn write_queued(dest: &Dest, mut bytes: Vec<u8>) -> Sent {
    let stats = dest.stats();
    let mut at = 0;
    while at < bytes.len() {
        match dest.try_write(&bytes[at..]) {
            Ok(0) => return Sent::Failed,
            Ok(n) => {
                let _ = stats.written(Ok(n));
                at += n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                bytes.drain(..at);
                return Sent::Rest(bytes);
            }
            Err(e) => {
                stats.record_error(&e);
                return Sent::Failed;
            }
        }
    }
    bytes.clear();
    Sent::Written(bytes)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// A connected pair on loopback: the side the heads are written to, shared as a
    /// request's connection shares it, and the peer that reads them.
    pub(crate) async fn pair() -> (Arc<TcpStream>, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (Arc::new(a), b)
    }

    /// Polls `f` once.
    pub(crate) async fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(std::pin::Pin::new(&mut *f).poll(cx))).await
    }

    /// Reads until `want` bytes came (within a generous bound).
    pub(crate) async fn read_exactly(peer: &mut TcpStream, want: usize) -> Vec<u8> {
        let mut got = vec![0; want];
        tokio::time::timeout(Duration::from_secs(10), peer.read_exact(&mut got))
            .await
            .expect("the peer got the bytes in time")
            .unwrap();
        got
    }

    fn up(stream: &Arc<TcpStream>, stats: &Arc<IoStats>) -> Dest {
        Dest::Upstream(stream.clone(), stats.clone())
    }

    async fn waker() -> Waker {
        std::future::poll_fn(|cx| Poll::Ready(cx.waker().clone())).await
    }

    /// The worker's sender on this (single-threaded) test runtime, registered once its
    /// first poll ran.
    pub(crate) async fn start_sender() -> tokio::task::JoinHandle<()> {
        let sender = tokio::spawn(sender());
        tokio::task::yield_now().await;
        sender
    }

    /// Queues `head` from a task of its own, which waits until the head comes back (it is
    /// woken for that) and gives what came back.
    async fn came_back(stream: Arc<TcpStream>, stats: Arc<IoStats>, head: Vec<u8>) -> Sent {
        let task = tokio::spawn(async move {
            let mut head = Some(head);
            let mut ticket = std::future::poll_fn(|cx| {
                let head = head.take().expect("queued once");
                Poll::Ready(queue(up(&stream, &stats), head, cx.waker(), false))
            })
            .await
            .expect("a sender is there");
            std::future::poll_fn(|_| match ticket.sent() {
                Sent::Fine => Poll::Pending,
                other => Poll::Ready(other),
            })
            .await
        });
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the task was woken with its head")
            .unwrap()
    }

    /// Closes `peer` with a reset (no lingering).
    fn reset_by(peer: TcpStream) {
        socket2::SockRef::from(&peer)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(peer);
    }

    /// A client connection as a worker holds it, and the peer that reads what it writes.
    pub(crate) async fn client() -> (Arc<Shared>, TcpStream) {
        let (a, b) = pair().await;
        let a = Arc::into_inner(a).unwrap().into_std().unwrap();
        let shared: Arc<Shared> = Arc::new(Shared {
            stats: Arc::new(IoStats::default()),
            inbound: std::sync::Mutex::new(crate::downstream::inbound::Inbound::default()),
            stream: crate::io::transport::Tcp::new(a),
        });
        (shared, b)
    }

    #[tokio::test]
    async fn a_client_write_waits_for_the_run_and_gets_its_buffer_back() {
        let sender = start_sender().await;
        let (c, mut peer) = client().await;
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        let n = out.len();
        tokio::time::timeout(Duration::from_secs(10), write_client(&c, &mut out))
            .await
            .expect("the run wrote it in time")
            .unwrap();
        assert!(out.is_empty(), "the buffer comes back emptied");
        assert!(out.capacity() >= 512, "and keeps its room");
        assert_eq!(c.stats.bytes_written(), n as u64);
        assert_eq!(read_exactly(&mut peer, n).await.len(), n);
        sender.abort();
    }

    #[tokio::test]
    async fn without_a_sender_a_client_write_goes_inline() {
        let (c, mut peer) = client().await;
        let mut out = b"HTTP/1.1 204 No Content\r\n\r\n".to_vec();
        let n = out.len();
        write_client(&c, &mut out).await.unwrap();
        assert_eq!(c.stats.bytes_written(), n as u64);
        assert_eq!(read_exactly(&mut peer, n).await.len(), n);
    }

    #[tokio::test]
    async fn a_client_write_that_fails_is_the_writes_failure() {
        let sender = start_sender().await;
        let (c, peer) = client().await;
        reset_by(peer);
        // Until the reset arrived, a write may still be taken: write until one fails.
        let failed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let mut out = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
                if write_client(&c, &mut out).await.is_err() {
                    break;
                }
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(failed.is_ok(), "a write to a reset connection fails");
        assert_eq!(
            c.stats.peer(),
            crate::io::PeerClose::Rst,
            "the reset is the connection's"
        );
        sender.abort();
    }

    #[tokio::test]
    async fn a_turn_of_both_kinds_reports_only_the_answers() {
        let sender = start_sender().await;
        let stats = Arc::new(IoStats::default());
        let (u, mut origin) = pair().await;
        let (c, mut peer) = client().await;
        let w = waker().await;
        let request = b"GET / HTTP/1.1\r\n\r\n".to_vec();
        let answer = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        let mut tr = queue(up(&u, &stats), request.clone(), &w, false).unwrap();
        let mut ta = queue(Dest::Client(c.clone()), answer.clone(), &w, true).unwrap();
        assert_eq!(read_exactly(&mut origin, request.len()).await, request);
        assert_eq!(read_exactly(&mut peer, answer.len()).await, answer);
        // The answer's task hears that it went (its buffer back); the request's does not.
        assert_eq!(ta.sent(), Sent::Written(Vec::new()));
        assert_eq!(tr.sent(), Sent::Fine);
        assert_eq!(c.stats.bytes_written(), answer.len() as u64);
        sender.abort();
    }

    #[tokio::test]
    async fn without_a_sender_the_head_comes_back_to_be_written_inline() {
        let (a, _b) = pair().await;
        let stats = Arc::new(IoStats::default());
        let head = b"GET / HTTP/1.1\r\n\r\n".to_vec();
        let back = queue(up(&a, &stats), head.clone(), &waker().await, false).unwrap_err();
        assert_eq!(back, head);
        assert_eq!(stats.bytes_written(), 0);
    }

    #[tokio::test]
    async fn the_heads_of_a_turn_go_in_order_once_the_sender_runs() {
        let sender = start_sender().await;
        let (a, mut pa) = pair().await;
        let (b, mut pb) = pair().await;
        let stats = Arc::new(IoStats::default());
        let w = waker().await;
        let mut ta = queue(up(&a, &stats), b"first\n".to_vec(), &w, false).unwrap();
        let mut tb = queue(up(&b, &stats), b"second\n".to_vec(), &w, false).unwrap();
        let mut ta2 = queue(up(&a, &stats), b"third\n".to_vec(), &w, false).unwrap();
        // Nothing is written before the sender's turn.
        assert_eq!(stats.bytes_written(), 0);
        assert_eq!(read_exactly(&mut pa, 12).await, b"first\nthird\n");
        assert_eq!(read_exactly(&mut pb, 7).await, b"second\n");
        assert_eq!(stats.bytes_written(), 19);
        for t in [&mut ta, &mut tb, &mut ta2] {
            assert_eq!(t.sent(), Sent::Fine);
        }
        sender.abort();
    }

    #[tokio::test]
    async fn a_ticket_dropped_before_its_turn_takes_its_head_out() {
        let sender = start_sender().await;
        let (a, mut pa) = pair().await;
        let stats = Arc::new(IoStats::default());
        let w = waker().await;
        let gone = queue(up(&a, &stats), b"never\n".to_vec(), &w, false).unwrap();
        drop(gone);
        let _kept = queue(up(&a, &stats), b"kept\n".to_vec(), &w, false).unwrap();
        assert_eq!(read_exactly(&mut pa, 5).await, b"kept\n");
        assert_eq!(stats.bytes_written(), 5, "nothing of the dropped head went");
        sender.abort();
    }

    #[tokio::test]
    async fn a_write_that_fails_is_the_tickets_failure() {
        let sender = start_sender().await;
        let (a, pa) = pair().await;
        // The peer resets the connection: a write on it fails.
        reset_by(pa);
        // Wait until the reset arrived (a read sees it).
        tokio::time::timeout(Duration::from_secs(10), a.readable())
            .await
            .unwrap()
            .unwrap();
        let stats = Arc::new(IoStats::default());
        let head = b"GET / HTTP/1.1\r\n\r\n".to_vec();
        assert_eq!(came_back(a, stats.clone(), head).await, Sent::Failed);
        assert_eq!(stats.bytes_written(), 0);
        sender.abort();
    }

    #[tokio::test]
    async fn a_head_the_socket_cannot_take_whole_comes_back_with_its_rest() {
        let sender = start_sender().await;
        let (a, mut pa) = pair().await;
        // A small send buffer and a peer that does not read yet: the socket fills.
        socket2::SockRef::from(&*a)
            .set_send_buffer_size(4096)
            .unwrap();
        socket2::SockRef::from(&pa)
            .set_recv_buffer_size(4096)
            .unwrap();
        let head: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let stats = Arc::new(IoStats::default());
        let rest = match came_back(a, stats.clone(), head.clone()).await {
            Sent::Rest(r) => r,
            other => panic!("expected the rest back, got {other:?}"),
        };
        let went = usize::try_from(stats.bytes_written()).unwrap();
        assert!(went > 0 && went < head.len(), "{went}");
        assert_eq!(rest, head[went..], "the rest is what did not go");
        let got = read_exactly(&mut pa, went).await;
        assert_eq!(got, head[..went]);
        sender.abort();
    }
}
