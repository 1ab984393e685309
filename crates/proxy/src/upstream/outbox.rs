//! Requests to upstreams, sent in a run at the end of the worker's turn.
//!
//! A worker's turn serves every connection its event loop found ready: a client's request
//! read and routed, an upstream's response read and passed on. Written at once, the
//! requests of a turn went out between the responses, one every 12 to 14 µs: an origin
//! that answers one in less than that finished each and went to sleep before the next came,
//! and every next request cost a wakeup (an IPI when the origin's CPU had halted).
//! HAProxy reads all that is ready, then sends. Here the head of a request without a
//! streaming body is queued instead, and the worker's sender, a task woken by the first
//! request queued in a turn and so polled after the turn's other tasks, writes the queued
//! heads one after another. The request's task does not wait for that: it goes on to wait
//! for the response, which cannot come before the head went. Nothing else writes on the
//! connection meanwhile (only heads without a body to stream are queued).
//!
//! A head the socket did not take whole (it is full, or it failed) is handed back to its
//! task, which is woken to write the rest, or to find the failure, itself. A task that
//! goes away before its head went (its client left) takes the head out of the queue: the
//! connection it was for closes with the task, and nothing is written for it.
//!
//! Outside a worker (no sender on the thread, or a runtime that moves tasks between
//! threads), or once its sender has ended, nothing is queued and the request's task writes
//! its head itself.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use tokio::net::TcpStream;

use crate::io::IoStats;

thread_local! {
    static OUTBOX: RefCell<Outbox> = const { RefCell::new(Outbox::new()) };
}

/// The heads queued on this thread, and what became of those not sent whole.
struct Outbox {
    queued: Vec<Queued>,
    /// Heads handed back: the part not written (all of it when the write failed or the
    /// sender ended first), by ticket.
    returned: Vec<(u64, Vec<u8>, bool)>,
    /// The sender's waker, while there is a sender on this thread.
    sender: Option<Waker>,
    /// Is the sender woken for the heads queued now?
    woken: bool,
    next: u64,
}

struct Queued {
    ticket: u64,
    stream: Arc<TcpStream>,
    stats: Arc<IoStats>,
    head: Vec<u8>,
    task: Waker,
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

/// A head in the worker's queue. Dropping it before the head went takes the head out.
#[derive(Debug)]
pub struct Ticket(u64);

/// What became of a queued head.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// Still queued, or written whole.
    Fine,
    /// Not written whole: the rest (all of it when the sender ended first), to be written
    /// by the request's task.
    Rest(Vec<u8>),
    /// The write failed (counted in the connection's stats).
    Failed,
}

/// Queues `head` for `stream`, or gives it back when there is no sender on this thread.
/// `task` is woken if the head comes back.
pub fn queue(
    stream: &Arc<TcpStream>,
    stats: &Arc<IoStats>,
    head: Vec<u8>,
    task: &Waker,
) -> Result<Ticket, Vec<u8>> {
    OUTBOX.with_borrow_mut(|o| {
        let Some(sender) = o.sender.as_ref() else {
            return Err(head);
        };
        if !o.woken {
            o.woken = true;
            sender.wake_by_ref();
        }
        o.next += 1;
        let ticket = o.next;
        o.queued.push(Queued {
            ticket,
            stream: stream.clone(),
            stats: stats.clone(),
            head,
            task: task.clone(),
        });
        Ok(Ticket(ticket))
    })
}

impl Ticket {
    /// What became of the head so far. After `Rest` or `Failed` the ticket is spent.
    pub fn sent(&self) -> Sent {
        OUTBOX.with_borrow_mut(
            |o| match o.returned.iter().position(|(t, _, _)| *t == self.0) {
                Some(i) => {
                    let (_, rest, failed) = o.returned.swap_remove(i);
                    if failed {
                        Sent::Failed
                    } else {
                        Sent::Rest(rest)
                    }
                }
                None => Sent::Fine,
            },
        )
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // `try_with`: a task dropped as its thread ends has nothing left to take out.
        let _ = OUTBOX.try_with(|o| {
            if let Ok(mut o) = o.try_borrow_mut() {
                o.queued.retain(|q| q.ticket != self.0);
                o.returned.retain(|(t, _, _)| *t != self.0);
            }
        });
    }
}

/// The worker's sender: writes the queued heads, in the order they came, whenever it is
/// woken. Runs on the worker's runtime for as long as the worker does.
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
            // thread (a worker's). On a runtime that moves tasks between threads, heads are
            // written by their tasks.
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
        let mut returned = Vec::new();
        for q in batch.drain(..) {
            if let Some(back) = write_head(&q) {
                returned.push((q.ticket, back));
                q.task.wake_by_ref();
            }
        }
        OUTBOX.with_borrow_mut(|o| {
            for (t, (rest, failed)) in returned {
                o.returned.push((t, rest, failed));
            }
            // Give the queue its room back: the next turn's heads need no allocation.
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
                    o.returned.push((q.ticket, q.head, false));
                }
            }
        });
    }
}

/// Writes a queued head; `None` when it went whole, or what its task gets back: the rest
/// and whether the write failed.
fn write_head(q: &Queued) -> Option<(Vec<u8>, bool)> {
    let mut at = 0;
    while at < q.head.len() {
        match q.stream.try_write(&q.head[at..]) {
            Ok(0) => return Some((Vec::new(), true)),
            Ok(n) => {
                let _ = q.stats.written(Ok(n));
                at += n;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Some((q.head[at..].to_vec(), false));
            }
            Err(e) => {
                q.stats.record_error(&e);
                return Some((Vec::new(), true));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// A connected pair on loopback: the side the heads are written to, shared as a
    /// request's connection shares it, and the peer that reads them.
    async fn pair() -> (Arc<TcpStream>, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (Arc::new(a), b)
    }

    /// Reads until `want` bytes came (within a generous bound).
    async fn read_exactly(peer: &mut TcpStream, want: usize) -> Vec<u8> {
        let mut got = vec![0; want];
        tokio::time::timeout(Duration::from_secs(10), peer.read_exact(&mut got))
            .await
            .expect("the peer got the bytes in time")
            .unwrap();
        got
    }

    async fn waker() -> Waker {
        std::future::poll_fn(|cx| Poll::Ready(cx.waker().clone())).await
    }

    /// The worker's sender on this (single-threaded) test runtime, registered once its
    /// first poll ran.
    async fn start_sender() -> tokio::task::JoinHandle<()> {
        let sender = tokio::spawn(sender());
        tokio::task::yield_now().await;
        sender
    }

    /// Queues `head` from a task of its own, which waits until the head comes back (it is
    /// woken for that) and gives what came back.
    async fn came_back(stream: Arc<TcpStream>, stats: Arc<IoStats>, head: Vec<u8>) -> Sent {
        let task = tokio::spawn(async move {
            let mut head = Some(head);
            let ticket = std::future::poll_fn(|cx| {
                let head = head.take().expect("queued once");
                Poll::Ready(queue(&stream, &stats, head, cx.waker()))
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

    #[tokio::test]
    async fn without_a_sender_the_head_comes_back_to_be_written_inline() {
        let (a, _b) = pair().await;
        let stats = Arc::new(IoStats::default());
        let head = b"GET / HTTP/1.1\r\n\r\n".to_vec();
        let back = queue(&a, &stats, head.clone(), &waker().await).unwrap_err();
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
        let ta = queue(&a, &stats, b"first\n".to_vec(), &w).unwrap();
        let tb = queue(&b, &stats, b"second\n".to_vec(), &w).unwrap();
        let ta2 = queue(&a, &stats, b"third\n".to_vec(), &w).unwrap();
        // Nothing is written before the sender's turn.
        assert_eq!(stats.bytes_written(), 0);
        assert_eq!(read_exactly(&mut pa, 12).await, b"first\nthird\n");
        assert_eq!(read_exactly(&mut pb, 7).await, b"second\n");
        assert_eq!(stats.bytes_written(), 19);
        for t in [&ta, &tb, &ta2] {
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
        let gone = queue(&a, &stats, b"never\n".to_vec(), &w).unwrap();
        drop(gone);
        let _kept = queue(&a, &stats, b"kept\n".to_vec(), &w).unwrap();
        assert_eq!(read_exactly(&mut pa, 5).await, b"kept\n");
        assert_eq!(stats.bytes_written(), 5, "nothing of the dropped head went");
        sender.abort();
    }

    #[tokio::test]
    async fn a_write_that_fails_is_the_tickets_failure() {
        let sender = start_sender().await;
        let (a, pa) = pair().await;
        // The peer resets the connection: a write on it fails.
        socket2::SockRef::from(&pa)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(pa);
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
