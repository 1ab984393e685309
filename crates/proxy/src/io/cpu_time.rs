//! Each worker's own CPU clock, read once per [`READ_EVERY`] of its work.
//!
//! A worker thread reads `CLOCK_THREAD_CPUTIME_ID` from the start of a connection task's
//! poll ([`super::clock::Clocked`]) when the last read is at least [`READ_EVERY`] old by
//! the poll's clock reading. The CPU time it used since the last read goes to
//! `linger_worker_cpu_seconds_total{worker}`: a worker near one CPU second per second is
//! saturated, and the workers' series side by side show how evenly the load is spread.
//!
//! The read also matters to the kernel's scheduler. Reading a running thread's CPU clock
//! makes the kernel bring the thread's runtime up to date, and the fair scheduler (EEVDF,
//! Linux 6.6 and later) then sees at once whether the thread's slice ran out while other
//! threads wait for its CPU. Without such a point, a busy worker that never sleeps keeps
//! the CPU until the next timer tick (4 ms at 250 Hz), past the end of its slice (about
//! 1.4 ms on 2 CPUs), while a client or an upstream process woken onto that CPU waits.
//! HAProxy reads the same clock on every turn of its event loop, for its own accounting,
//! with the same effect. Where the load generator shares the CPUs with one busy worker,
//! those waits made the slowest 1 % of small requests 1.25 to 1.32 times HAProxy's in
//! three benchmark runs; with the reads, 0.91 to 1.12 times in three runs
//! (`docs/benchmarks.md`, "The worker's CPU clock" and "Where it stands").
//!
//! A read is one system call; at most one per 100 µs of work costs a busy worker well
//! under 1 % of its time, and an idle worker makes none.

use std::cell::RefCell;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;

/// How much time passes between two reads of a busy worker's CPU clock, at least.
pub const READ_EVERY: Duration = Duration::from_micros(100);

/// The counter a worker's CPU time goes to.
pub type CpuCounter = Counter<f64, AtomicU64>;

thread_local! {
    /// The worker running on this thread, if any: its counter and its last read.
    static WORKER: RefCell<Option<Reader>> = const { RefCell::new(None) };
}

struct Reader {
    counter: CpuCounter,
    /// The poll clock's reading ([`super::clock::now_ns`]) at the last read.
    read_at_ns: u64,
    /// The thread's CPU time at the last read.
    cpu: Duration,
}

/// Makes the calling thread a worker whose CPU time goes to `counter`, from now on.
pub fn install(counter: CpuCounter, now_ns: u64) {
    let cpu = thread_cpu();
    WORKER.with(|w| {
        *w.borrow_mut() = Some(Reader {
            counter,
            read_at_ns: now_ns,
            cpu,
        });
    });
}

/// At the start of a poll whose clock reading is `now_ns`: reads the thread's CPU clock if
/// the last read is [`READ_EVERY`] old or older. Nothing on a thread that is no worker.
pub fn tick(now_ns: u64) {
    WORKER.with(|w| {
        let mut w = w.borrow_mut();
        let Some(r) = w.as_mut() else {
            return;
        };
        if now_ns.saturating_sub(r.read_at_ns) < READ_EVERY.as_nanos() as u64 {
            return;
        }
        let cpu = thread_cpu();
        r.counter.inc_by(cpu.saturating_sub(r.cpu).as_secs_f64());
        r.cpu = cpu;
        r.read_at_ns = now_ns;
    });
}

/// The calling thread's CPU time.
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spins until the thread's CPU clock moved by `d`.
    fn burn(d: Duration) {
        let start = thread_cpu();
        while thread_cpu().saturating_sub(start) < d {
            std::hint::black_box(0u64);
        }
    }

    #[test]
    fn a_worker_counts_its_cpu_time_once_the_interval_passed() {
        let counter = CpuCounter::default();
        install(counter.clone(), 0);
        burn(Duration::from_millis(3));
        // Too soon by the poll clock: no read, nothing counted.
        tick(READ_EVERY.as_nanos() as u64 - 1);
        assert_eq!(counter.get(), 0.0);
        tick(READ_EVERY.as_nanos() as u64);
        let first = counter.get();
        assert!(first >= 0.003, "counted {first} s after 3 ms of CPU");
        // The next read counts only what came after the first.
        burn(Duration::from_millis(2));
        tick(2 * READ_EVERY.as_nanos() as u64);
        let second = counter.get() - first;
        assert!(
            (0.002..0.5).contains(&second),
            "counted {second} s for 2 ms of CPU"
        );
        WORKER.with(|w| w.borrow_mut().take());
    }

    #[test]
    fn a_thread_that_is_no_worker_reads_nothing() {
        tick(u64::MAX);
        WORKER.with(|w| assert!(w.borrow().is_none()));
    }
}
