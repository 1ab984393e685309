//! Which CPU each worker runs on.
//!
//! A worker is a thread with its own event loop and its own connections. Left to the
//! kernel, two workers can end up sharing one CPU while the other CPUs run the rest of
//! the machine (the origin, the load balancer's health checks, a sidecar's app): each
//! worker is busy enough that no wakeup moves it, and one worker's connections then wait
//! whole scheduler slices for the other worker to be preempted. On two CPUs, with two
//! workers, a client and an origin sharing the machine, that wait was up to 8 ms
//! (`perf sched latency`), and it made linger's slowest 1 % of small requests 1.15 to 1.8
//! times slower than with one worker pinned to each CPU (`docs/benchmarks.md`).
//!
//! So, by default (`pin_workers = "auto"`), when linger runs exactly one worker per CPU
//! it may use (its affinity mask: a cpuset, `taskset`), worker `i` is pinned to the
//! `i`-th of those CPUs. With fewer workers than CPUs nothing is pinned: pinning those
//! workers to the first CPUs would stack every such process on the same CPUs. `"on"`
//! pins in every case (worker `i` to CPU `i` modulo the allowed ones), `"off"` never.

use serde::{Deserialize, Serialize};

/// `[runtime] pin_workers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PinWorkers {
    /// Pin when there is exactly one worker per allowed CPU (and more than one worker).
    #[default]
    Auto,
    /// Always pin, worker `i` to the allowed CPU `i` modulo their count.
    On,
    /// Never pin: the kernel places the workers.
    Off,
}

/// The CPU each worker pins itself to, in worker order, or `None` for no pinning.
/// `allowed` is the process's CPUs, in ascending order.
pub fn plan(mode: PinWorkers, workers: usize, allowed: &[usize]) -> Option<Vec<usize>> {
    if allowed.is_empty() || workers == 0 {
        return None;
    }
    let pin = match mode {
        PinWorkers::Off => false,
        PinWorkers::On => true,
        // One worker on one CPU is pinned already; one worker on many is best left free.
        PinWorkers::Auto => workers > 1 && workers == allowed.len(),
    };
    pin.then(|| (0..workers).map(|i| allowed[i % allowed.len()]).collect())
}

/// The CPUs this thread may run on (the process's, when called before any pinning), in
/// ascending order. Empty where linger cannot tell.
pub fn allowed() -> std::io::Result<Vec<usize>> {
    #[cfg(target_os = "linux")]
    {
        use rustix::thread::CpuSet;
        let set = rustix::thread::sched_getaffinity(None)?;
        Ok((0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect())
    }
    #[cfg(not(target_os = "linux"))]
    {
        Ok(Vec::new())
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin_this_thread(cpu: usize) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let mut set = rustix::thread::CpuSet::new();
        set.set(cpu);
        rustix::thread::sched_setaffinity(None, &set)?;
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = cpu;
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "pinning a thread to a CPU is supported on Linux only",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::{plan, PinWorkers};

    #[test]
    fn auto_pins_only_one_worker_per_allowed_cpu() {
        assert_eq!(plan(PinWorkers::Auto, 2, &[0, 1]), Some(vec![0, 1]));
        assert_eq!(plan(PinWorkers::Auto, 3, &[2, 5, 7]), Some(vec![2, 5, 7]));
        // Fewer workers than CPUs (a CPU quota, or --workers 2 on a big machine): free.
        assert_eq!(plan(PinWorkers::Auto, 2, &[0, 1, 2, 3]), None);
        // More workers than CPUs: free, the kernel shares them out.
        assert_eq!(plan(PinWorkers::Auto, 4, &[0, 1]), None);
        // One worker: nothing to gain.
        assert_eq!(plan(PinWorkers::Auto, 1, &[3]), None);
    }

    #[test]
    fn on_pins_every_worker_round_robin_and_off_never() {
        assert_eq!(plan(PinWorkers::On, 3, &[4, 6]), Some(vec![4, 6, 4]));
        assert_eq!(plan(PinWorkers::On, 1, &[0, 1, 2]), Some(vec![0]));
        assert_eq!(plan(PinWorkers::Off, 2, &[0, 1]), None);
    }

    #[test]
    fn no_known_cpus_means_no_pinning() {
        assert_eq!(plan(PinWorkers::On, 2, &[]), None);
        assert_eq!(plan(PinWorkers::Auto, 0, &[0]), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_thread_pinned_to_an_allowed_cpu_runs_only_there() {
        let allowed = super::allowed().expect("sched_getaffinity");
        assert!(!allowed.is_empty());
        let cpu = *allowed.last().unwrap();
        let seen = std::thread::spawn(move || {
            super::pin_this_thread(cpu).expect("sched_setaffinity");
            super::allowed().expect("sched_getaffinity")
        })
        .join()
        .unwrap();
        assert_eq!(seen, vec![cpu]);
        // The pinning was the spawned thread's own: this one keeps its CPUs.
        assert_eq!(super::allowed().unwrap(), allowed);
    }
}
