//! What linger learns of one endpoint from its own connections: does it close right after
//! a response it did not announce as the last (R9)?
//!
//! Such an origin's FIN races the next request on that connection. A request that may be
//! retried loses nothing when it loses the race (it goes again on a fresh connection); one
//! that may not (a POST) would fail. So once an endpoint is seen closing right after its
//! responses, requests that may not be retried go to a fresh connection, while the others
//! keep reusing. Only the upstream's own closes count as evidence; a reused connection that
//! completes an exchange counts against it, and the evidence fades after
//! [`EVIDENCE_MEMORY`] without a new sighting.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A pooled connection the upstream closed within this time of its last response closed
/// "right after" it; idle closes are seconds long (the shortest seen in practice is 2 s).
pub const RIGHT_AFTER: Duration = Duration::from_millis(500);
/// How long a sighting is remembered without a new one.
pub const EVIDENCE_MEMORY: Duration = Duration::from_secs(60);
/// The most sightings counted; each completed reuse takes one back.
const MAX_SCORE: u32 = 8;

/// One endpoint's learned close behaviour.
#[derive(Debug, Default)]
pub struct Learned {
    score: AtomicU32,
    last_seen: Mutex<Option<Instant>>,
}

// === impl Learned ===

impl Learned {
    /// The upstream closed a connection `idle` after its last response, unannounced.
    /// Returns true when this sighting marks the endpoint (it was not marked before).
    pub fn upstream_closed(&self, idle: Duration, now: Instant) -> bool {
        if idle > RIGHT_AFTER {
            return false;
        }
        let was = self.closes_after_response(now);
        *self.last_seen.lock().expect("learned lock") = Some(now);
        let _ = self
            .score
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                Some((s + 1).min(MAX_SCORE))
            });
        !was
    }

    /// A reused connection carried a whole exchange and stayed open.
    pub fn reuse_worked(&self) {
        let _ = self
            .score
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| s.checked_sub(1));
    }

    /// Does the endpoint close right after its responses, as far as linger has seen?
    pub fn closes_after_response(&self, now: Instant) -> bool {
        if self.score.load(Ordering::Relaxed) == 0 {
            return false;
        }
        self.last_seen
            .lock()
            .expect("learned lock")
            .is_some_and(|t| now.saturating_duration_since(t) < EVIDENCE_MEMORY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_right_after_responses_are_learned_and_fade() {
        let t0 = Instant::now();
        let l = Learned::default();
        assert!(!l.closes_after_response(t0));
        // An idle close seconds later says nothing about closing after responses.
        assert!(!l.upstream_closed(Duration::from_secs(2), t0));
        assert!(!l.closes_after_response(t0));
        // A FIN right after a response marks the endpoint, once.
        assert!(l.upstream_closed(Duration::from_millis(1), t0));
        assert!(!l.upstream_closed(Duration::from_millis(1), t0));
        assert!(l.closes_after_response(t0));
        // Reuses that work take the sightings back.
        l.reuse_worked();
        assert!(l.closes_after_response(t0));
        l.reuse_worked();
        assert!(!l.closes_after_response(t0));
        // And sightings fade with time.
        l.upstream_closed(Duration::ZERO, t0);
        assert!(!l.closes_after_response(t0 + EVIDENCE_MEMORY));
    }
}
