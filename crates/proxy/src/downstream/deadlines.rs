//! One worker's deadlines for its client connections' waits (idle timeout, header read
//! timeout, the drain's grace, maximum age): a sorted set of (deadline, connection id),
//! and one task that wakes each connection through the registry once its deadline passed.
//!
//! A connection arms a deadline when it has none armed, or when the one it needs is
//! earlier than the one armed. A later one (the idle timeout starting over after each
//! response) leaves the armed one in place: the connection wakes then, finds its real
//! deadline ahead, and arms that. Keep-alive traffic so costs no timer operation per
//! request, and an idle connection costs a 16-byte key here instead of a timer in its
//! task. The lifecycle machine still decides what is due; this only wakes it.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::io::clock;
use crate::observe::connections::{Registry, Side};

/// One worker's armed deadlines. (Each worker runs on its own thread: the lock is never
/// contended.)
#[derive(Debug)]
pub struct Deadlines {
    registry: Arc<Registry>,
    /// (deadline as [`clock::now_ns`], downstream connection id).
    armed: Mutex<BTreeSet<(u64, u64)>>,
    /// A deadline earlier than every other was armed: the task sleeps less.
    earlier: Notify,
}

impl Deadlines {
    pub fn new(registry: Arc<Registry>) -> Self {
        Self {
            registry,
            armed: Mutex::new(BTreeSet::new()),
            earlier: Notify::new(),
        }
    }

    fn arm(&self, at: u64, id: u64) {
        let first = {
            let mut set = self.armed.lock().expect("deadlines lock");
            set.insert((at, id));
            set.first() == Some(&(at, id))
        };
        if first {
            self.earlier.notify_one();
        }
    }

    fn disarm(&self, at: u64, id: u64) {
        self.armed.lock().expect("deadlines lock").remove(&(at, id));
    }

    /// How many deadlines are armed.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.armed.lock().expect("deadlines lock").len()
    }

    /// Wakes each connection whose deadline passed; runs as long as its worker.
    pub async fn run(self: Arc<Self>) {
        let sleep = tokio::time::sleep(std::time::Duration::ZERO);
        tokio::pin!(sleep);
        let mut due = Vec::new();
        loop {
            let now = clock::now_ns();
            let next = {
                let mut set = self.armed.lock().expect("deadlines lock");
                while let Some(&(at, id)) = set.first() {
                    if at > now {
                        break;
                    }
                    set.pop_first();
                    due.push(id);
                }
                set.first().map(|&(at, _)| at)
            };
            for id in due.drain(..) {
                self.registry.wake(Side::Downstream, id);
            }
            match next {
                Some(at) => {
                    sleep.as_mut().reset(clock::at_ns(at));
                    tokio::select! {
                        () = &mut sleep => {}
                        () = self.earlier.notified() => {}
                    }
                }
                None => self.earlier.notified().await,
            }
        }
    }
}

/// The deadline one connection has armed: 8 bytes in the frame every idle connection
/// keeps (the worker's [`Deadlines`] and the connection's id are reached through the
/// connection; its owner calls [`Armed::disarm`] when its loop ends).
#[derive(Debug, Default)]
pub struct Armed {
    /// As [`clock::now_ns`]; 0 when none is armed.
    at: u64,
}

impl Armed {
    /// Is `deadline` due? If not, makes sure connection `id` wakes by then (its task's
    /// waker is the one the registry holds).
    pub fn due(&mut self, deadlines: &Deadlines, id: u64, deadline: tokio::time::Instant) -> bool {
        let now = clock::now_ns();
        let at = clock::ns(deadline).max(1);
        if self.at != 0 && self.at <= now {
            // Fired (or about to): not armed any more.
            self.disarm(deadlines, id);
        }
        if at <= now {
            return true;
        }
        if self.at == 0 || self.at > at {
            self.disarm(deadlines, id);
            deadlines.arm(at, id);
            self.at = at;
        }
        false
    }

    pub fn disarm(&mut self, deadlines: &Deadlines, id: u64) {
        if self.at != 0 {
            deadlines.disarm(self.at, id);
            self.at = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_later_deadline_keeps_the_armed_one_and_an_earlier_one_replaces_it() {
        let d = Deadlines::new(Arc::new(Registry::new(0)));
        let now = clock::now();
        let mut a = Armed::default();
        assert!(!a.due(&d, 7, now + Duration::from_secs(60)));
        let first = a.at;
        assert!(
            !a.due(&d, 7, now + Duration::from_secs(61)),
            "later: nothing moves"
        );
        assert_eq!((a.at, d.len()), (first, 1));
        assert!(
            !a.due(&d, 7, now + Duration::from_secs(5)),
            "earlier: re-armed"
        );
        assert!(a.at < first);
        assert_eq!(d.len(), 1);
        assert!(a.due(&d, 7, now), "a deadline that passed is due");
        a.disarm(&d, 7);
        assert_eq!(d.len(), 0, "the loop's end disarms");
    }
}
