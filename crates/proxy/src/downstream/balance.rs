//! Spreading accepted connections over the workers. Every worker accepts on its own copy of
//! each listening socket, and whichever is polled first takes the connection: under load
//! one worker ends up with more connections than another, and its connections wait behind
//! each other while the other worker has time to spare. So the accepting worker gives each
//! connection to the worker with the fewest (as HAProxy's listeners do with their
//! per-thread queues), through that worker's inbox; the socket moves to the other worker's
//! runtime before anything is read from it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::mpsc;

/// A connection handed from the worker that accepted it to the one that serves it.
#[derive(Debug)]
pub struct Handoff {
    pub stream: std::net::TcpStream,
    pub peer: SocketAddr,
    pub local: Option<SocketAddr>,
    /// Which listener accepted it.
    pub listener: usize,
}

/// One worker as the others see it.
#[derive(Debug)]
pub(crate) struct Slot {
    /// Connections given to it and not yet closed.
    pub(crate) open: Arc<AtomicUsize>,
    inbox: mpsc::UnboundedSender<Handoff>,
}

/// The workers of one server.
#[derive(Debug, Default)]
pub struct Balance {
    pub(crate) slots: RwLock<Vec<Slot>>,
}

/// Where an accepted connection goes.
#[derive(Debug)]
pub enum Placement {
    /// The accepting worker serves it.
    Here,
    /// Another worker does: send it to this inbox (the count is that worker's).
    There(mpsc::UnboundedSender<Handoff>, Arc<AtomicUsize>),
}

impl Balance {
    /// A worker joins: its index, the count of its connections (kept by the caller as
    /// they close) and the inbox it serves handed connections from.
    pub fn join(&self) -> (usize, Arc<AtomicUsize>, mpsc::UnboundedReceiver<Handoff>) {
        let open = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::unbounded_channel();
        let mut slots = self.slots.write().expect("balance lock");
        slots.push(Slot {
            open: open.clone(),
            inbox: tx,
        });
        (slots.len() - 1, open, rx)
    }

    /// Chooses the worker for a connection that worker `me` accepted, and counts it there.
    /// `me` keeps it unless another worker has at least two fewer: a handoff costs a
    /// cross-thread wake and a reregistration, and a difference of one is no imbalance.
    pub fn place(&self, me: usize) -> Placement {
        let slots = self.slots.read().expect("balance lock");
        let load = |i: usize| slots[i].open.load(Ordering::Relaxed);
        let mine = load(me);
        let least = (0..slots.len()).min_by_key(|&i| load(i)).unwrap_or(me);
        if least == me || load(least) + 1 >= mine {
            slots[me].open.fetch_add(1, Ordering::Relaxed);
            return Placement::Here;
        }
        slots[least].open.fetch_add(1, Ordering::Relaxed);
        Placement::There(slots[least].inbox.clone(), slots[least].open.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_goes_to_the_worker_with_the_fewest() {
        let b = Balance::default();
        let (w0, open0, _rx0) = b.join();
        let (w1, open1, mut rx1) = b.join();
        assert_eq!((w0, w1), (0, 1));
        // A difference of one stays where it was accepted.
        assert!(matches!(b.place(w0), Placement::Here));
        assert_eq!(open0.load(Ordering::Relaxed), 1);
        assert!(matches!(b.place(w0), Placement::Here));
        // Two more than worker 1: the next goes there, and is counted there.
        let Placement::There(tx, _) = b.place(w0) else {
            panic!("worker 1 has two fewer");
        };
        assert_eq!(
            (open0.load(Ordering::Relaxed), open1.load(Ordering::Relaxed)),
            (2, 1)
        );
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let peer = stream.local_addr().unwrap();
        tx.send(Handoff {
            stream,
            peer,
            local: None,
            listener: 0,
        })
        .unwrap();
        assert_eq!(rx1.try_recv().unwrap().peer, peer);
        // A single worker keeps everything.
        let solo = Balance::default();
        let (only, _, _rx) = solo.join();
        for _ in 0..5 {
            assert!(matches!(solo.place(only), Placement::Here));
        }
    }
}
