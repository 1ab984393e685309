//! One clock read per turn of a connection's task.
//!
//! A request crosses two dozen places that want the time (the journal's events on both
//! sides, the lifecycle machines, the pool, the try's timings). Each read is a call into
//! the vDSO: about 3 % of a small request's CPU when every place read for itself. A
//! connection's task runs [`Clocked`]: each poll reads the clock once and everything that
//! asks [`now`] during that poll gets that reading. A poll is a few microseconds of
//! synchronous work, so the reading is never older than that; outside a clocked poll,
//! [`now`] reads the clock.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use tokio::time::Instant;

thread_local! {
    /// The reading of the current clocked poll, and the same as nanoseconds since
    /// [`anchor`].
    static NOW: Cell<Option<(Instant, u64)>> = const { Cell::new(None) };
}

/// The process's first reading, and the wall clock then: [`now_ns`] counts from it and
/// [`wall`] maps readings to wall-clock times through it.
fn anchors() -> &'static (Instant, SystemTime) {
    static ANCHORS: std::sync::OnceLock<(Instant, SystemTime)> = std::sync::OnceLock::new();
    ANCHORS.get_or_init(|| (Instant::now(), SystemTime::now()))
}

fn anchor() -> Instant {
    anchors().0
}

/// The reading that [`now_ns`] gave as `ns`.
pub fn at_ns(ns: u64) -> Instant {
    anchor() + std::time::Duration::from_nanos(ns)
}

/// A reading as [`now_ns`] counts it (0 for one before the first reading).
pub fn ns(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(anchor()).as_nanos()).unwrap_or(u64::MAX)
}

/// The wall-clock time of a reading: the wall clock at the first reading plus the
/// monotonic time since. (No wall time is kept per connection; a step of the system
/// clock after the process started is not reflected.)
pub fn wall(at: Instant) -> SystemTime {
    let (first, first_wall) = *anchors();
    match at.checked_duration_since(first) {
        Some(d) => first_wall + d,
        None => first_wall - first.duration_since(at),
    }
}

fn read() -> (Instant, u64) {
    let t = Instant::now();
    let ns = t.saturating_duration_since(anchor()).as_nanos();
    (t, u64::try_from(ns).unwrap_or(u64::MAX))
}

/// The time, as read at the start of the current poll of a clocked task.
pub fn now() -> Instant {
    NOW.with(Cell::get).map_or_else(Instant::now, |(t, _)| t)
}

/// [`now`] as nanoseconds since the process's first reading: a difference of two of these
/// is one subtraction, where one of two `Instant`s normalises a pair of timespecs.
pub fn now_ns() -> u64 {
    NOW.with(Cell::get).unwrap_or_else(read).1
}

/// Time since `then`, by [`now`] (zero if `then` is later).
pub fn since(then: Instant) -> std::time::Duration {
    now().saturating_duration_since(then)
}

pin_project_lite::pin_project! {
    /// A future whose every poll reads the clock once, for [`now`].
    #[derive(Debug)]
    pub struct Clocked<F> {
        #[pin]
        inner: F,
    }
}

impl<F> Clocked<F> {
    pub fn new(inner: F) -> Self {
        Self { inner }
    }
}

impl<F: Future> Future for Clocked<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // Nested clocked futures keep the outer reading's place.
        let reading = read();
        super::cpu_time::tick(reading.1);
        let outer = NOW.with(|c| c.replace(Some(reading)));
        let r = self.project().inner.poll(cx);
        NOW.with(|c| c.set(outer));
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_clocked_poll_sees_one_reading_and_the_next_poll_a_new_one() {
        let (first, second) = Clocked::new(async {
            let a = now();
            tokio::time::advance(std::time::Duration::from_millis(5)).await;
            // advance() returned: this is a later poll of the same task.
            let b = now();
            assert_eq!(now(), b, "one reading per poll");
            (a, b)
        })
        .await;
        assert!(second >= first + std::time::Duration::from_millis(5));
    }

    #[tokio::test(start_paused = true)]
    async fn nanoseconds_follow_the_readings() {
        let (a, b) = Clocked::new(async {
            let a = now_ns();
            tokio::time::advance(std::time::Duration::from_millis(3)).await;
            (a, now_ns())
        })
        .await;
        assert!(b - a >= 3_000_000, "{a} {b}");
        assert_eq!(at_ns(b) - at_ns(a), std::time::Duration::from_nanos(b - a));
    }

    #[test]
    fn a_reading_maps_to_the_wall_clock() {
        let before = SystemTime::now();
        let t = Instant::now();
        let w = wall(t);
        let after = SystemTime::now();
        // Within a second: the mapping goes through the first reading of the process.
        assert!(
            w + std::time::Duration::from_secs(1) >= before,
            "{w:?} {before:?}"
        );
        assert!(
            w <= after + std::time::Duration::from_secs(1),
            "{w:?} {after:?}"
        );
        // Readings 1.5 s apart map to wall times 1.5 s apart.
        if let Some(earlier) = t.checked_sub(std::time::Duration::from_millis(1500)) {
            let gap = w.duration_since(wall(earlier)).unwrap();
            assert_eq!(gap, std::time::Duration::from_millis(1500));
        }
    }

    #[test]
    fn outside_a_clocked_poll_now_reads_the_clock() {
        let a = now();
        // Wait until the clock has moved on: then `now` must have too.
        while Instant::now() == a {
            std::hint::spin_loop();
        }
        assert!(now() > a);
    }
}
