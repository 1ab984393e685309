//! Which worker serves an accepted connection.
//!
//! Every worker accepts from the same listening sockets, and whichever is polled first
//! takes the next connection: a burst of connections can land mostly on one worker (with
//! two workers, a burst of 20 went 20 and 0, twice in three tries). With the workers
//! pinned one per CPU
//! (`io/cpu.rs`), that worker's CPU then carries most of the load while the other idles,
//! and the busy worker's connections wait on it. So a worker that already holds more
//! connections than the least busy one, by more than a small margin, hands the new
//! connection over: the least busy worker's runtime opens and serves it, as HAProxy's
//! listeners hand a connection to the least loaded thread.
//!
//! The margin keeps connections where they were accepted while the workers are close to
//! even (a handoff costs a wakeup of the other worker): 1, plus 1/32 of what the least
//! busy worker holds.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::runtime::Handle;

use super::{ListenerCtx, WorkerCtx};
use crate::observe::metrics::{Metrics, WorkerLabels};

/// The workers that accept, each in its slot from when it starts. The slots are fixed
/// when the server is built, so an accept reads them without a lock.
#[derive(Debug)]
pub struct Workers {
    slots: Box<[OnceLock<Slot>]>,
    next: AtomicUsize,
}

/// A worker as the others see it: where to spawn a connection, and what it holds.
#[derive(Debug)]
pub struct Slot {
    handle: Handle,
    ctx: Arc<WorkerCtx>,
}

/// One worker's share of the spread: the connections it holds, counted from the moment
/// one is accepted for it (`linger_worker_connections_open`), and the connections handed
/// to it (`linger_worker_handoffs_total`).
#[derive(Debug, Default)]
pub struct Share {
    pub held: Gauge,
    handed: Counter,
}

// === impl Share ===

impl Share {
    /// Worker `worker`'s series.
    pub fn new(metrics: &Metrics, worker: usize) -> Self {
        let labels = WorkerLabels { worker };
        Self {
            held: metrics.worker_connections.get_or_create_owned(&labels),
            handed: metrics.worker_handoffs.get_or_create_owned(&labels),
        }
    }
}

// === impl Workers ===

impl Workers {
    /// Room for `count` workers (the configured number).
    pub fn new(count: usize) -> Self {
        Self {
            slots: (0..count).map(|_| OnceLock::new()).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// Adds the calling worker (its runtime is the current one), built by `make` from its
    /// index. A worker past the configured number serves what it accepts itself.
    pub fn register(&self, make: impl FnOnce(usize) -> Arc<WorkerCtx>) -> (usize, Arc<WorkerCtx>) {
        let me = self.next.fetch_add(1, Ordering::Relaxed);
        let ctx = make(me);
        if let Some(slot) = self.slots.get(me) {
            let set = slot.set(Slot {
                handle: Handle::current(),
                ctx: ctx.clone(),
            });
            debug_assert!(set.is_ok(), "each index is taken once");
        }
        (me, ctx)
    }

    /// The worker that should serve a connection worker `me` just accepted, or `None`
    /// when that is `me`. (A worker not started yet holds nothing to hand to.)
    pub fn pick(&self, me: usize) -> Option<&Slot> {
        if self.slots.len() < 2 {
            return None;
        }
        let held = self.slots.iter().map(|s| {
            s.get().map_or(usize::MAX, |s| {
                usize::try_from(s.ctx.share.held.get()).unwrap_or(0)
            })
        });
        let to = choose(held, me);
        (to != me).then(|| self.slots[to].get()).flatten()
    }
}

/// Hands an accepted connection to another worker: it is counted as that worker's (and
/// as open) from now, and that worker's runtime opens and serves it.
pub fn hand_off(to: &Slot, listener: Arc<ListenerCtx>, accepted: super::Accepted) {
    to.ctx.share.handed.inc();
    let counted = Counted::new(to.ctx.clone());
    to.handle.spawn(async move {
        let worker = counted.start();
        super::start_counted(&worker, &listener, accepted);
    });
}

/// A handed-over connection's counts, until its worker starts it. Should that runtime
/// drop the handoff unstarted (it is shutting down), the counts go back down, and the
/// socket closes with the dropped future.
struct Counted(Option<Arc<WorkerCtx>>);

impl Counted {
    fn new(worker: Arc<WorkerCtx>) -> Self {
        worker.count_in();
        Self(Some(worker))
    }

    /// The connection's own task owns the counts from here (it takes them down when it
    /// ends).
    fn start(mut self) -> Arc<WorkerCtx> {
        self.0.take().expect("started once")
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(w) = self.0.take() {
            w.count_out();
        }
    }
}

/// The pure choice: `held` is what each worker holds. `me` keeps the connection unless it
/// holds more than the least busy worker plus 1 plus 1/32 of that; then the least busy
/// worker (the first of them) gets it.
fn choose(held: impl Iterator<Item = usize>, me: usize) -> usize {
    let mut mine = None;
    let mut least = (me, usize::MAX);
    for (i, h) in held.enumerate() {
        if i == me {
            mine = Some(h);
        }
        if h < least.1 {
            least = (i, h);
        }
    }
    match mine {
        Some(m) if m > least.1 + 1 + least.1 / 32 => least.0,
        _ => me,
    }
}

#[cfg(test)]
mod tests {
    use super::choose;

    fn pick(held: &[usize], me: usize) -> usize {
        choose(held.iter().copied(), me)
    }

    #[test]
    fn the_accepting_worker_keeps_a_connection_while_close_to_even() {
        assert_eq!(pick(&[0, 0], 0), 0);
        assert_eq!(pick(&[1, 0], 0), 0);
        assert_eq!(pick(&[10, 9], 0), 0);
        assert_eq!(pick(&[5, 9], 0), 0, "the least busy keeps its own");
        // 1 + 320/32 = 11 over the least busy is still even enough.
        assert_eq!(pick(&[331, 320], 0), 0);
        assert_eq!(pick(&[7], 0), 0, "one worker");
        // A worker not started yet counts as full (`Workers::pick`).
        assert_eq!(
            pick(&[40, usize::MAX], 0),
            0,
            "nothing handed to a worker not started"
        );
        assert_eq!(pick(&[40, usize::MAX, 3], 0), 2);
    }

    #[test]
    fn a_busier_worker_hands_over_to_the_least_busy() {
        assert_eq!(pick(&[2, 0], 0), 1);
        assert_eq!(pick(&[332, 320], 0), 1);
        assert_eq!(pick(&[30, 20, 12], 0), 2);
        assert_eq!(pick(&[30, 12, 12], 0), 1, "the first of the least busy");
    }

    #[test]
    fn a_burst_accepted_by_one_worker_ends_even() {
        for workers in [2usize, 3, 4] {
            let mut held = vec![0usize; workers];
            for _ in 0..1000 {
                let to = pick(&held, 0);
                held[to] += 1;
            }
            let lo = *held.iter().min().unwrap();
            let hi = *held.iter().max().unwrap();
            assert!(hi - lo <= 2 + lo / 32, "{held:?}");
        }
        let mut held = [0usize; 2];
        for _ in 0..64 {
            let to = pick(&held, 0);
            held[to] += 1;
        }
        assert!(held[0].abs_diff(held[1]) <= 2, "{held:?}");
    }
}
